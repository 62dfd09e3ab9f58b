// libFuzzer target: FrameBuffer fed arbitrary chunks.
// Input layout: byte 0 = maximum frame size selector, then pairs of (chunk size byte, chunk bytes...).
// Invariants: never crashes, pending <= storage size, every frame lies within the buffered window, and
// after an error the buffer is reset (as the router does).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard !input.isEmpty else { return 0 }
    let maximum = 16 + Int(input[0]) * 4  // 16…1036 bytes: small, so oversized frames are reached
    var buffer = FrameBuffer(maximumFrameSize: maximum, readSize: 64)
    var index = 1
    while index < input.count {
        let chunkSize = Int(input[index]) % 97 + 1
        index += 1
        let chunk = input[index..<min(index + chunkSize, input.count)]
        index += chunk.count
        var offset = chunk.startIndex
        while offset < chunk.endIndex {
            buffer.compact()
            if buffer.freeSpace == 0 {
                // A full buffer with no whole frame must be a decode error, never a stuck state.
                do throws(FrameError) {
                    let frame = try buffer.next()
                    if frame == nil { fatalError("full buffer (\(buffer.pending) bytes, max frame \(maximum)) but no frame and no error") }
                } catch { buffer.reset() }
                continue
            }
            let take = min(buffer.freeSpace, chunk.endIndex - offset)
            buffer.append(chunk[offset..<(offset + take)])
            offset += take
            precondition(buffer.pending <= buffer.storage.count, "pending exceeds the buffer")
            while true {
                do throws(FrameError) {
                    guard let frame = try buffer.next() else { break }
                    precondition(frame.range.lowerBound >= 0 && frame.range.upperBound <= buffer.end, "frame outside the window")
                    precondition(frame.size <= maximum, "frame larger than the maximum")
                    precondition(frame.bodyStart > frame.range.lowerBound && frame.bodyStart <= frame.range.upperBound)
                    let bodyCount = frame.range.upperBound - frame.bodyStart
                    precondition(frame.fields.dataType.upperBound <= bodyCount && frame.fields.shardKey.upperBound <= bodyCount)
                    buffer.withBytes(frame.range) { bytes in _ = bytes.count }
                } catch {
                    buffer.reset()
                    break
                }
            }
            precondition(buffer.pending >= 0 && buffer.pending <= buffer.storage.count, "pending out of bounds")
        }
    }
    return 0
}
