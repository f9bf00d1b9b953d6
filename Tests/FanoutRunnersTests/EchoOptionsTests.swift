@testable import FanoutRunners
import Testing

@Suite struct EchoOptionsTests {
    @Test func optionsAreReadFromAJSONObjectThatNamesThem() {
        let options = EchoRunner.Options(payload: Array(#"{ "delay_ms" : 25, "turns": 3, "fail": "boom", "retryable": true }"#.utf8))
        #expect(options.delayMs == 25)
        #expect(options.turns == 3)
        #expect(options.fail == "boom")
        #expect(options.retryable)
    }

    @Test func otherPayloadsAreEchoedWithoutOptions() {
        for payload in [#"{"n":1,"pad":"xxxx"}"#, #"{"retryable": true}"#, "not json", #"["delay_ms", 5]"#, ""] {
            let options = EchoRunner.Options(payload: Array(payload.utf8))
            #expect(options.delayMs == 0 && options.turns == 0 && options.fail == nil, "\(payload)")
        }
    }
}
