/// Who dials whom, and which names a peer's certificate may carry. Pure.
public enum LinkNames {
    /// Of two nodes, the one whose name sorts first dials; the other accepts. One link per pair.
    public static func dials(_ node: String, _ peer: String) -> Bool {
        node < peer
    }

    /// Why a peer's certificate is refused.
    public enum Refusal: Error, Equatable, Sendable, CustomStringConvertible {
        case noNames
        case notANode(names: [String])
        case notTheDialedNode(expected: String, names: [String])

        public var description: String {
            switch self {
            case .noNames:
                return "the peer's certificate has no common name and no DNS name: it cannot name a node"
            case .notANode(let names):
                return "the peer's certificate names \(names.joined(separator: ", ")), which is no node of the spec"
            case .notTheDialedNode(let expected, let names):
                return "dialed node \(expected), but its certificate names \(names.joined(separator: ", "))"
            }
        }
    }

    /// Checks the names of a peer's certificate (its common name and DNS subject alternative names).
    ///
    /// - Parameters:
    ///   - names: the certificate's names.
    ///   - knownNodes: the spec's nodes.
    ///   - expected: for a peer this node dialed, the node it meant to reach; nil for an accepted connection.
    /// - Returns: the names that are nodes of the spec; the peer's Hello must name one of them.
    public static func check(
        certificateNames names: [String], knownNodes: Set<String>, expected: String?
    ) throws(Refusal) -> Set<String> {
        if names.isEmpty { throw .noNames }
        let nodes = Set(names).intersection(knownNodes)
        if let expected {
            guard nodes.contains(expected) else { throw .notTheDialedNode(expected: expected, names: names) }
            return [expected]
        }
        if nodes.isEmpty { throw .notANode(names: names) }
        return nodes
    }

    /// The common names in a DER-encoded X.509 certificate's subject (not its issuer's), or nil when the bytes
    /// are not a certificate. NIOSSL exposes subject alternative names but not the common name.
    public static func subjectCommonNames(der: [UInt8]) -> [String]? {
        der.withUnsafeBytes { raw -> [String]? in
            var reader = DERReader(bytes: raw)
            guard let certificate = reader.next(), certificate.tag == 0x30 else { return nil }
            var fields = DERReader(bytes: raw, range: certificate.content)
            guard let tbs = fields.next(), tbs.tag == 0x30 else { return nil }
            var tbsFields = DERReader(bytes: raw, range: tbs.content)
            // [0] version (optional), serialNumber, signature, issuer, validity, subject
            guard var element = tbsFields.next() else { return nil }
            if element.tag == 0xa0 { guard let next = tbsFields.next() else { return nil }; element = next }
            for _ in 0..<4 { guard let next = tbsFields.next() else { return nil }; element = next }
            guard element.tag == 0x30 else { return nil }
            var names: [String] = []
            var rdns = DERReader(bytes: raw, range: element.content)
            while let set = rdns.next() {
                guard set.tag == 0x31 else { return nil }
                var attributes = DERReader(bytes: raw, range: set.content)
                while let attribute = attributes.next() {
                    guard attribute.tag == 0x30 else { return nil }
                    var parts = DERReader(bytes: raw, range: attribute.content)
                    guard let oid = parts.next(), let value = parts.next() else { return nil }
                    // 2.5.4.3 commonName
                    if oid.tag == 0x06 && Array(raw[oid.content]) == [0x55, 0x04, 0x03]
                        && [0x0c, 0x13, 0x16, 0x14].contains(value.tag)
                    {
                        names.append(
                            String(decoding: UnsafeRawBufferPointer(rebasing: raw[value.content]), as: UTF8.self))
                    }
                }
            }
            return names
        }
    }
}

/// Reads DER elements (tag, length, content) one after another in a range.
struct DERReader {
    let bytes: UnsafeRawBufferPointer
    var offset: Int
    let end: Int

    init(bytes: UnsafeRawBufferPointer, range: Range<Int>? = nil) {
        self.bytes = bytes
        self.offset = range?.lowerBound ?? 0
        self.end = range?.upperBound ?? bytes.count
    }

    mutating func next() -> (tag: UInt8, content: Range<Int>)? {
        guard offset + 2 <= end else { return nil }
        let tag = bytes[offset]
        var length = Int(bytes[offset + 1])
        var position = offset + 2
        if length & 0x80 != 0 {
            let count = length & 0x7f
            guard count >= 1, count <= 4, position + count <= end else { return nil }
            length = 0
            for i in 0..<count { length = length << 8 | Int(bytes[position + i]) }
            position += count
        }
        guard length <= end - position else { return nil }
        offset = position + length
        return (tag, position..<(position + length))
    }
}
