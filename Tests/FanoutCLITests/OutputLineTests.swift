import Foundation
import Testing

import OpenAIBatchFormat

/// Output lines are written by hand for speed; they must be the bytes
/// `JSONSerialization` wrote before, and bodies must be judged JSON or not
/// exactly as Foundation judges them.
@Suite struct OutputLineTests {
    /// The line as the Foundation-based writer built it.
    static func reference(_ line: OpenAIOutputLine) -> String {
        func encode(_ value: Any) -> String {
            String(decoding: try! JSONSerialization.data(withJSONObject: value, options: [.sortedKeys, .withoutEscapingSlashes, .fragmentsAllowed]),
                   as: UTF8.self)
        }
        var text = "{\"id\":\(encode(line.id)),\"custom_id\":\(encode(line.customID)),\"response\":"
        if let response = line.response {
            text += "{\"status_code\":\(encode(response.statusCode)),\"request_id\":\(response.requestID.map(encode) ?? "null"),\"body\":"
            let isJSON = (try? JSONSerialization.jsonObject(with: Data(response.body), options: [.fragmentsAllowed])) != nil
            text += isJSON ? String(decoding: response.body.map { $0 == 0x0A || $0 == 0x0D ? 0x20 : $0 }, as: UTF8.self)
                : encode(String(decoding: response.body, as: UTF8.self))
            text += "}"
        } else {
            text += "null"
        }
        text += ",\"error\":" + (line.error.map { encode(["code": $0.code, "message": $0.message]) } ?? "null") + "}"
        return text
    }

    static let strings = [
        "", "plain", "quote \" backslash \\ slash /", "controls \u{0}\u{1}\u{7}\u{8}\u{9}\u{A}\u{B}\u{C}\u{D}\u{1B}\u{1F}",
        "del \u{7F}", "é ü 漢字 😀 \u{2028}\u{2029}", "\u{FEFF}bom", "trailing\\",
    ]

    static let bodies: [String] = [
        #"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#, "{\r\n  \"pretty\": [1, 2.5, -0, 1E+5, 3e-7]\n}",
        "[]", "{}", "null", "true", "false", "0", "-0.0", "12345678901234567890", "1e400", "1e99", "01", "1.", ".5", "+1",
        "", " ", "not json", "[1,]", "{\"a\":1,}", "\u{FEFF}{}", #""\ud83d\ude00""#, #""\ud800""#, #""\udc00x""#, #""\u0000""#,
        #"{"a":"\/\b\f\n\r\t\"\\"}"#, "\"raw\ttab\"", "{\"k\" : [ true , false , null ] }", "[1 2]", "{\"a\" 1}", "nul",
        "\"é😀\"", String(repeating: "[", count: 600) + String(repeating: "]", count: 600),
        String(repeating: "[", count: 400) + String(repeating: "]", count: 400), "1" + String(repeating: "0", count: 400),
        "{} x", "\u{B}1",
    ]

    @Test func linesMatchJSONSerializationByteForByte() {
        for (index, text) in Self.strings.enumerated() {
            for response in [nil, OpenAIOutputLine.Response(statusCode: 200 + index, requestID: index % 2 == 0 ? nil : text,
                                                            body: Array(text.utf8))] {
                let line = OpenAIOutputLine(id: "batch_req_\(index)", customID: text, response: response,
                                            error: index % 3 == 0 ? nil : (code: text, message: text + "!"))
                #expect(String(decoding: line.encoded(), as: UTF8.self) == Self.reference(line), "string \(index): \(text.debugDescription)")
            }
        }
    }

    @Test func bodiesAreJudgedAsFoundationJudgesThem() {
        var bodies = Self.bodies.map { Array($0.utf8) }
        // Bytes no Swift string holds: invalid, overlong, surrogate and out-of-range UTF-8 inside a string.
        bodies += [[0x22, 0xFF, 0x22], [0x22, 0xC0, 0x80, 0x22], [0x22, 0xED, 0xA0, 0x80, 0x22], [0x22, 0xF4, 0x90, 0x80, 0x80, 0x22],
                   [0x22, 0xE2, 0x82, 0x22], [0x22, 0x00, 0x22], [0x7B, 0x7D, 0x00]]
        for body in bodies {
            let line = OpenAIOutputLine(id: "x", customID: "c", response: .init(statusCode: 200, requestID: nil, body: body), error: nil)
            #expect(String(decoding: line.encoded(), as: UTF8.self) == Self.reference(line), "body \(body)")
        }
    }

    @Test func theFastCheckNeverAcceptsWhatFoundationRefuses() {
        for body in Self.bodies.map({ Array($0.utf8) }) where body.withUnsafeBufferPointer(JSONValidation.isCertainlyValid) {
            #expect((try? JSONSerialization.jsonObject(with: Data(body), options: [.fragmentsAllowed])) != nil,
                    "\(String(decoding: body, as: UTF8.self))")
        }
        // And it does take the everyday answers itself, without Foundation.
        let answer = Array(#"{"id":"chatcmpl-1","choices":[{"message":{"role":"assistant","content":"Hi \"there\" é"}}],"usage":{"total_tokens":12}}"#.utf8)
        #expect(answer.withUnsafeBufferPointer(JSONValidation.isCertainlyValid))
    }
}
