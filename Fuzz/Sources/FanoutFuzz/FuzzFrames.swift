import FanoutWire
import NIOCore

/// One libFuzzer input: bytes as they would arrive on a connection. They go
/// through the frame decoder (length header, size limit) and every decoded
/// body through protobuf-c and the Swift conversion; a decoded frame must
/// encode again. Any trap, sanitizer report or leak is a finding.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrames(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    var buffer = ByteBuffer(bytes: UnsafeBufferPointer(start: data, count: size))
    var decoder = FrameDecoder(maxFrameBytes: 1 << 16)
    while true {
        do {
            guard let frame = try decoder.decode(buffer: &buffer) else { break }
            switch frame.kind {
            case .unknown, .rejected:
                continue  // receivers ignore or refuse these; they are never sent
            default:
                _ = try? FrameCoding.encode(frame)
            }
        } catch {
            break  // a malformed frame ends the connection, as the daemon does
        }
    }
    // The body alone, as the protobuf decoder sees it.
    _ = try? FrameCoding.decode(UnsafeRawBufferPointer(start: data, count: size))
    return 0
}

/// libFuzzer's driver, from the runtime `-sanitize=fuzzer` links in.
@_silgen_name("LLVMFuzzerRunDriver")
private func runFuzzerDriver(
    _ argc: UnsafeMutablePointer<CInt>,
    _ argv: UnsafeMutablePointer<UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?>,
    _ callback: @convention(c) (UnsafePointer<UInt8>, Int) -> CInt
) -> CInt

/// SwiftPM links an executable's entry point under this name; it hands
/// control to libFuzzer (its own `main` is not used).
@_cdecl("FanoutFuzz_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var count = argc
    var arguments = argv
    return runFuzzerDriver(&count, &arguments) { data, size in fuzzFrames(data, size) }
}
