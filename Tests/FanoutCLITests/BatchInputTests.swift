import Foundation
import Testing

@testable import fanout
import OpenAIBatchFormat

/// Reading Batch lines: the body travels byte for byte, and ambiguous lines are refused by number.
@Suite struct BatchInputTests {
    static func input(_ lines: [String]) -> BatchInput {
        BatchInput(contentsOf: Data(lines.joined(separator: "\n").utf8))
    }

    @Test func theBodyIsCutFromTheLineAsWritten() throws {
        let body = #"{"model": "m", "temperature": 0.70, "messages": [{"role": "user", "content": "a \"quoted\" body} with \\"}], "n": 12345678901234567890}"#
        let input = Self.input([#"{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": \#(body), "x": "\\"}"#])
        #expect(input.problems.isEmpty, "\(input.problems)")
        let task = try #require(input.tasks.first)
        #expect(String(decoding: task.payload, as: UTF8.self) == body)
        #expect(task.url == "/v1/chat/completions")
    }

    @Test func aBodyNestedElsewhereIsNotTakenForTheLinesBody() throws {
        let line = #"{"custom_id": "a", "meta": {"body": {"model": "wrong"}}, "url": "/v1/embeddings", "body": {"model": "right", "input": "x"}}"#
        let task = try #require(Self.input([line]).tasks.first)
        #expect(String(decoding: task.payload, as: UTF8.self) == #"{"model": "right", "input": "x"}"#)
    }

    @Test func ambiguousOrUnsupportedLinesAreRefusedByNumber() {
        let input = Self.input([
            #"{"custom_id": "ok", "url": "/v1/chat/completions", "body": {"model": "m"}}"#,
            #"{"custom_id": "dup", "url": "/v1/chat/completions", "body": {"model": "a"}, "body": {"model": "b"}}"#,
            #"{"custom_id": "img", "url": "/v1/images/generations", "body": {"model": "m"}}"#,
            #"{"custom_id": "stream", "url": "/v1/chat/completions", "body": {"model": "m", "stream": true}}"#,
            #"{"custom_id": "nourl", "body": {"model": "m"}}"#,
        ])
        let byLine = Dictionary(input.problems.map { ($0.line, $0.message) }, uniquingKeysWith: { first, _ in first })
        #expect(byLine[2]?.contains("\"body\" appears twice") == true)
        #expect(byLine[3]?.contains("not a supported endpoint") == true)
        #expect(byLine[4]?.contains("stream") == true)
        #expect(byLine[5]?.contains("url is missing") == true)
        #expect(byLine[1] == nil)
    }

    @Test func aByteOrderMarkIsSkipped() {
        let data = Data([0xEF, 0xBB, 0xBF]) + Data(#"{"custom_id": "a", "url": "/v1/chat/completions", "body": {"model": "m"}}"#.utf8)
        let input = BatchInput(contentsOf: data)
        #expect(input.problems.isEmpty, "\(input.problems)")
        #expect(input.tasks.count == 1)
    }

    @Test func prettyPrintedAnswersStayOnOneLineUnchanged() {
        let body = "{\r\n  \"id\": \"x\",\n  \"n\": 0.10\n}"
        let embedded = String(decoding: OpenAIOutputLine.embedded(Array(body.utf8)), as: UTF8.self)
        #expect(embedded == "{    \"id\": \"x\",   \"n\": 0.10 }")
    }
}
