import FanoutCore
import Testing

@testable import FanoutRunners

@Suite struct ExecSettingsTests {
    func decode(_ object: [String: Any]) throws(FanoutError) -> ExecSettings {
        try ExecSettings.decode(object, agent: "tool")
    }

    func message(_ object: [String: Any]) -> String? {
        do {
            _ = try decode(object)
            return nil
        } catch {
            #expect(error.kind == .invalidArgument)
            return error.message
        }
    }

    @Test func defaultsAndEveryKey() throws {
        let minimal = try decode(["command": ["cat"]])
        #expect(minimal == ExecSettings(command: ["cat"]))
        #expect(minimal.maxOutputBytes == 10 * 1024 * 1024)
        #expect(minimal.killGraceMs == 5_000)
        #expect(minimal.env.isEmpty && minimal.cwd == nil && minimal.retryableExitCodes.isEmpty)

        let full = try decode([
            "command": ["tool", "--fast"], "env": ["A": "1"], "cwd": "/tmp", "retryable_exit_codes": [75, 111],
            "max_output_bytes": 1_024, "kill_grace_ms": 0,
        ])
        #expect(full == ExecSettings(command: ["tool", "--fast"], env: ["A": "1"], cwd: "/tmp",
                                     retryableExitCodes: [75, 111], maxOutputBytes: 1_024, killGraceMs: 0))
        #expect(ExecSettings.keys == ["command", "env", "cwd", "retryable_exit_codes", "max_output_bytes", "kill_grace_ms"])
    }

    @Test func unknownKeysAreNamed() {
        let text = message(["command": ["cat"], "comand": "x", "timeout": 3])
        #expect(text?.hasPrefix("agent \"tool\": unknown exec runner settings \"comand\", \"timeout\" (known: ") == true)
        #expect(text?.contains("max_output_bytes") == true)
    }

    @Test func missingOrEmptyCommand() {
        for object: [String: Any] in [[:], ["command": [String]()], ["env": ["A": "1"]]] {
            #expect(message(object) == "agent \"tool\": the exec runner needs \"command\", a non-empty array of strings (the program and its arguments)")
        }
        #expect(message(["command": [""]])?.contains("the program is empty") == true)
    }

    @Test func wrongTypesNameTheKey() {
        #expect(message(["command": "cat file"]) == "agent \"tool\": \"command\" must be a non-empty array of strings (the program and its arguments)")
        #expect(message(["command": ["cat", 3] as [Any]])?.contains("\"command\" must be") == true)
        #expect(message(["command": ["cat"], "env": ["A": 1]]) == "agent \"tool\": \"env\" must be an object whose values are strings")
        #expect(message(["command": ["cat"], "cwd": 5]) == "agent \"tool\": \"cwd\" must be a non-empty string (a directory)")
        #expect(message(["command": ["cat"], "max_output_bytes": "10MB"]) == "agent \"tool\": \"max_output_bytes\" must be an integer from 1 to 1073741824")
        #expect(message(["command": ["cat"], "max_output_bytes": 1.5])?.contains("\"max_output_bytes\" must be an integer") == true)
        #expect(message(["command": ["cat"], "kill_grace_ms": true])?.contains("\"kill_grace_ms\" must be an integer") == true)
        #expect(message(["command": ["cat"], "retryable_exit_codes": 75])?.contains("\"retryable_exit_codes\" must be an array") == true)
    }

    @Test func outOfRangeNumbersAndBadStrings() {
        #expect(message(["command": ["cat"], "max_output_bytes": 0]) == "agent \"tool\": \"max_output_bytes\" must be an integer from 1 to 1073741824; got 0")
        #expect(message(["command": ["cat"], "max_output_bytes": 2_000_000_000])?.hasSuffix("got 2000000000") == true)
        #expect(message(["command": ["cat"], "kill_grace_ms": -1])?.contains("\"kill_grace_ms\" must be an integer from 0 to 5000; got -1") == true)
        #expect(message(["command": ["cat"], "retryable_exit_codes": [0]])?.contains("got 0") == true)
        #expect(message(["command": ["cat"], "retryable_exit_codes": [256]])?.contains("\"retryable_exit_codes\" must be") == true)
        #expect(message(["command": ["cat"], "env": ["A=B": "1"]])?.contains("\"A=B\" is not a variable name") == true)
        #expect(message(["command": ["cat"], "env": ["FANOUT_TURN_FD": "4"]])?.contains("FANOUT_TURN_FD is set by the runner itself") == true)
        #expect(message(["command": ["ca\0t"]])?.contains("NUL") == true)
        #expect(message(["command": ["cat"], "cwd": ""])?.contains("\"cwd\" must be") == true)
    }
}
