import FanoutWire
import Testing

@Suite("WireError")
struct WireErrorTests {
    @Test("descriptions are sentences a person can act on")
    func descriptions() {
        #expect(WireError.frameTooLarge(length: 5_000_000, max: 4_194_304).description
            == "frame of 5000000 bytes exceeds the maximum of 4194304 bytes")
        #expect(WireError.malformedFrame("request carries no call").description
            == "malformed frame: request carries no call")
        #expect(WireError.truncatedFrame(expected: 20, received: 7).description
            == "the connection closed in the middle of a frame: received 7 of 20 bytes")
        #expect(WireError.unencodableValue("x contains a NUL character").description
            == "cannot encode frame: x contains a NUL character")
        #expect("\(WireError.frameTooLarge(length: 2, max: 1))" == "frame of 2 bytes exceeds the maximum of 1 bytes")
    }

    @Test("status codes: too large is RESOURCE_EXHAUSTED, the rest INVALID_ARGUMENT")
    func statusCodes() {
        #expect(WireError.frameTooLarge(length: 2, max: 1).statusCode == .resourceExhausted)
        #expect(WireError.malformedFrame("x").statusCode == .invalidArgument)
        #expect(WireError.truncatedFrame(expected: 2, received: 1).statusCode == .invalidArgument)
        #expect(WireError.unencodableValue("x").statusCode == .invalidArgument)
    }

    @Test("status carries the code and the description")
    func status() {
        let error = WireError.frameTooLarge(length: 9, max: 8)
        #expect(error.status == WireStatus(code: .resourceExhausted, message: "frame of 9 bytes exceeds the maximum of 8 bytes"))
    }

    @Test("the default maximum frame is 4 MiB")
    func defaultMaximum() {
        #expect(FrameDecoder.defaultMaxFrameBytes == 4_194_304)
        #expect(FrameDecoder().maxFrameBytes == 4_194_304)
        #expect(FrameEncoder().maxFrameBytes == 4_194_304)
    }
}
