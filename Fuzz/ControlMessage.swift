// libFuzzer target: the control socket's framing (MessageBuffer, 64 KiB limit as ControlServer uses) fed in
// chunks, each whole body decoded as a pmm.v1.Request (when built with SwiftProtobuf, -D FUZZ_PROTOBUF).
#if FUZZ_PROTOBUF
import Foundation
import SwiftProtobuf
#endif

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzControlMessage(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard !input.isEmpty else { return 0 }
    let maximum = input[0] & 1 == 0 ? 64 << 10 : 32
    var buffer = MessageBuffer(maximumSize: maximum)
    var index = 1
    var appended = 0
    var consumed = 0
    outer: while index < input.count {
        let chunkSize = Int(input[index]) % 61 + 1
        index += 1
        let chunk = input[index..<min(index + chunkSize, input.count)]
        index += chunk.count
        buffer.append(chunk)
        appended += chunk.count
        while true {
            do throws(FrameError) {
                guard let body = try buffer.next() else { break }
                precondition(body.count <= maximum, "body over the maximum")
                consumed += body.count + 1  // a prefix takes at least one byte (maybe more: non-minimal varints are legal)
                #if FUZZ_PROTOBUF
                if let request = try? Pmm_V1_Request(serializedBytes: body) {
                    // Round-trip what decoded: re-encoding must not crash.
                    _ = try? request.serializedBytes() as [UInt8]
                    _ = request.textFormatString()
                }
                #endif
            } catch {
                break outer  // the server closes the connection
            }
        }
        precondition(buffer.pending >= 0 && buffer.pending <= appended - consumed, "pending \(buffer.pending) > \(appended - consumed)")
    }
    return 0
}
