extension FrameBuffer {
    /// After bytes that are not a frame (the tail of a frame a previous reader of the pipe read in part, or
    /// garbage), skips to the next place where a frame of `dataType` can start, and returns how many bytes it
    /// skipped (at least one).
    ///
    /// A place qualifies when a varint length there is followed by field 1 of an envelope (`data_type`) holding
    /// `dataType`, as every envelope pmm's writers encode begins; or when the buffer ends before that can be
    /// told (the rest is kept for the next read). Frames whose envelope does not begin with its data type are
    /// skipped while resynchronizing; whole frames after it are read as usual.
    public mutating func resynchronize(dataType: [UInt8]) -> Int {
        var marker: [UInt8] = [0x0A]
        var length = UInt64(dataType.count)
        repeat {
            marker.append(UInt8(length & 0x7F) | (length >= 0x80 ? 0x80 : 0))
            length >>= 7
        } while length > 0
        marker += dataType
        let (start, end, maximum) = (self.start, self.end, maximumFrameSize)
        let found: Int = storage.withUnsafeBytes { raw in
            let window = UnsafeRawBufferPointer(rebasing: raw[start..<end])
            candidates: for offset in 1..<Swift.max(1, window.count) {
                switch Varint.decode(window, at: offset) {
                case .incomplete: return offset
                case .malformed: continue
                case .value(let length, let prefix):
                    guard length >= UInt64(marker.count), length <= UInt64(maximum - prefix) else { continue }
                    for (i, byte) in marker.enumerated() {
                        let at = offset + prefix + i
                        if at >= window.count { return offset }
                        if window[at] != byte { continue candidates }
                    }
                    return offset
                }
            }
            return window.count
        }
        let skipped = Swift.max(1, Swift.min(found, pending))
        discard(skipped)
        return skipped
    }
}
