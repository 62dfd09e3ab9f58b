// libFuzzer target: FrameBuffer fed arbitrary chunks, driven the way the router's readIngress drives it
// (prepare(minimum: readSize), write at most min(freeSpace, readSize), parse every frame, reset on error,
// shrinkIfIdle when empty).
// Input layout: byte 0 = maximum frame size selector, byte 1 = read size selector, then pairs of
// (chunk size byte, chunk bytes...).
// Invariants: never traps; storage and pending stay within capacityLimit; every frame lies in the buffered
// window and within the maximum; a read always gets room unless a frame or an error is due (never stuck).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzFrameDecoder(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeBufferPointer(start: data, count: size)
    guard input.count >= 2 else { return 0 }
    let maximum = 16 + Int(input[0]) * 4  // 16…1036 bytes: small, so oversized frames are reached
    let readSize = 1 + Int(input[1]) % 64
    var buffer = FrameBuffer(maximumFrameSize: maximum, readSize: readSize)
    var index = 2

    func check(_ buffer: FrameBuffer) {
        precondition(buffer.storage.count <= buffer.capacityLimit, "storage \(buffer.storage.count) over its limit \(buffer.capacityLimit)")
        precondition(buffer.start >= 0 && buffer.start <= buffer.end && buffer.end <= buffer.storage.count, "window out of the storage")
        precondition(buffer.pending <= buffer.capacityLimit, "pending exceeds the buffer")
    }

    /// Parses every frame; false after an error (the buffer is then reset).
    func drain(_ buffer: inout FrameBuffer) -> Bool {
        while true {
            do throws(FrameError) {
                guard let frame = try buffer.next() else { return true }
                precondition(frame.range.lowerBound >= 0 && frame.range.upperBound <= buffer.end, "frame outside the window")
                precondition(frame.size <= maximum, "frame larger than the maximum")
                precondition(frame.bodyStart > frame.range.lowerBound && frame.bodyStart <= frame.range.upperBound)
                let bodyCount = frame.range.upperBound - frame.bodyStart
                precondition(frame.fields.dataType.upperBound <= bodyCount && frame.fields.shardKey.upperBound <= bodyCount)
                buffer.withBytes(frame.range) { bytes in precondition(bytes.count == frame.size) }
            } catch {
                buffer.reset()
                return false
            }
        }
    }

    while index < input.count {
        let chunkSize = Int(input[index]) % 97 + 1
        index += 1
        let chunk = Array(input[index..<min(index + chunkSize, input.count)])
        index += chunk.count
        var offset = 0
        while offset < chunk.count {
            buffer.prepare(minimum: readSize)
            check(buffer)
            let room = min(buffer.freeSpace, readSize)
            if room == 0 {
                // Full: what is buffered must be a frame or an error, or the pipe would be stuck for ever.
                let before = buffer.pending
                if drain(&buffer) && buffer.pending == before {
                    fatalError("no room for a read (\(buffer.pending) bytes pending, limit \(buffer.capacityLimit), max frame \(maximum)) and no frame or error")
                }
                continue
            }
            let take = min(room, chunk.count - offset)
            let written = buffer.write { raw -> (written: Int, result: Int) in
                chunk.withUnsafeBytes { source in
                    raw.copyMemory(from: UnsafeRawBufferPointer(rebasing: source[offset..<(offset + take)]))
                }
                return (take, take)
            }
            offset += written
            check(buffer)
            _ = drain(&buffer)
            check(buffer)
        }
        if buffer.pending == 0 { buffer.shrinkIfIdle() }
        check(buffer)
    }
    return 0
}
