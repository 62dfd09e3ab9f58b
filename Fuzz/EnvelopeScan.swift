// libFuzzer target: EnvelopeScanner.scan on arbitrary bytes. The ranges it reports must lie in the body.

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzEnvelopeScan(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let body = UnsafeRawBufferPointer(start: size == 0 ? nil : UnsafeRawPointer(data), count: size)
    do throws(FrameError) {
        let fields = try EnvelopeScanner.scan(body)
        precondition(fields.dataType.lowerBound >= 0 && fields.dataType.upperBound <= size, "data_type out of range")
        precondition(fields.shardKey.lowerBound >= 0 && fields.shardKey.upperBound <= size, "shard_key out of range")
        _ = Array(body[fields.dataType])
        _ = Array(body[fields.shardKey])
    } catch {
        _ = error.description
    }
    // Varint.decode at every offset must stay inside the bytes.
    var offset = 0
    while offset < size {
        if case .value(_, let n) = Varint.decode(body, at: offset) { precondition(n >= 1 && n <= 10 && offset + n <= size) }
        offset += 1
    }
    return 0
}
