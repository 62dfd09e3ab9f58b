/// Where a node listens for links, or where a peer is dialed: `10.250.0.1:7400`, `[::1]:7400`.
public struct LinkAddress: Hashable, Sendable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `host:port` (IPv6 hosts in brackets).
    public init?(_ text: String) {
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]),
            (0...65535).contains(port)
        else { return nil }
        var host = String(text[..<colon])
        if host.hasPrefix("[") && host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
        guard !host.isEmpty else { return nil }
        self.init(host: host, port: port)
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// Mutual TLS between routers: the spec's `links.tls` (paths with `${NODE}` already expanded).
public struct LinkTLS: Sendable, Equatable {
    /// PEM file of the certificate authority every node's certificate must chain to.
    public var ca: String
    /// PEM file of this node's certificate (chain); its common name or a DNS name must be this node's name.
    public var certificate: String
    /// PEM file of this node's private key.
    public var key: String

    public init(ca: String, certificate: String, key: String) {
        self.ca = ca
        self.certificate = certificate
        self.key = key
    }
}

/// Everything a `LinkManager` needs: this node, its peers, and the limits.
public struct LinkConfiguration: Sendable {
    /// This node's name.
    public var node: String
    /// Where to accept links from the peers that dial this node (port 0: any free port, see `listeningPort`).
    public var listen: LinkAddress
    /// Every other node and where it listens. This node dials the peers whose names sort after its own.
    public var peers: [String: LinkAddress]
    /// The spec's node names: a Hello or a certificate naming anything else is refused.
    public var knownNodes: Set<String>
    /// The revision this node's router serves, told to every peer.
    public var revision: UInt64
    /// Mutual TLS, or nil for plaintext (the router warns).
    public var tls: LinkTLS?
    /// The most frame bytes sent to one peer and not yet acknowledged: `send` takes no more. A receiver
    /// acknowledges a frame once its consumer has read it, so the window covers the network, the receiving
    /// router's queue and the consumer's pipe (up to its `pipeSize`), and a link whose window is full waits:
    /// 4 KB frames across two one-core nodes carried 285–316 k msg/s at 4 MiB, 315–321 k at 8, 327–338 k at 16
    /// (`pmm bench --link --one-core-per-node`, four paired rounds), with unpaced p50 rising from 3 to 4 and
    /// 6–7 ms. 8 MiB meets the 0.7× the one-host path asks; 128 B frames and paced latency did not move. A
    /// receiver accepts twice its own window, so nodes still on a 4 MiB build accept an 8 MiB sender.
    public var windowBytes = 8 << 20
    /// The longest link message accepted (a batch is at most `batchBytes` plus one frame).
    public var maximumMessageSize = 8 << 20
    /// The most frame bytes in one Batch message.
    public var batchBytes = 64 << 10
    /// The most bytes written to one connection per event-loop tick, so reads, acks and other links get their
    /// turn.
    public var burstBytes = 1 << 20
    /// How long a connection may go without sending before it sends a Heartbeat.
    public var heartbeatInterval: Duration = .seconds(1)
    /// A connection that hears nothing for this long is closed (a cut cable, a hung peer) and dialed again.
    public var idleTimeout: Duration = .seconds(5)
    public var connectTimeout: Duration = .seconds(3)
    /// Dialing again after a failure: 100 ms doubling to 5 s, with jitter.
    public var backoff = Backoff()

    public init(
        node: String, listen: LinkAddress, peers: [String: LinkAddress], knownNodes: Set<String>,
        revision: UInt64, tls: LinkTLS?
    ) {
        self.node = node
        self.listen = listen
        self.peers = peers
        self.knownNodes = knownNodes
        self.revision = revision
        self.tls = tls
    }
}

/// What a peer said in its Hello, and where the numbering of frames to it resumes.
public struct LinkPeer: Equatable, Sendable {
    public var node: String
    public var revision: UInt64
    public var protocolVersion: UInt32
    /// The peer's instances and whether each is available.
    public var health: [String: Bool]
    /// The highest frame of this node's the peer received, possibly on an earlier connection (0: none, or the
    /// peer restarted and forgot): `send` numbers from `resumeAfter + 1`. Frames up to here that the peer has
    /// not acknowledged are still the peer's to deliver (it acknowledges them later); frames after it never
    /// arrived. A router that routed again everything unacknowledged when the link dropped sends nothing
    /// again; one that keeps its frames (`LinkOutbox`) drops what this covers and sends the rest.
    public var resumeAfter: UInt64
    let generation: UInt64

    public init(
        node: String, revision: UInt64, protocolVersion: UInt32, health: [String: Bool], resumeAfter: UInt64,
        generation: UInt64
    ) {
        self.node = node
        self.revision = revision
        self.protocolVersion = protocolVersion
        self.health = health
        self.resumeAfter = resumeAfter
        self.generation = generation
    }
}

/// Frames received from a peer, numbered `firstSequence`, `firstSequence + 1`, … in the peer's `stream`.
public struct LinkReceived: Equatable, Sendable {
    /// The peer's incarnation: pass it back to `acknowledge`.
    public var stream: UInt64
    public var firstSequence: UInt64
    public var frames: LinkFrames

    public var lastSequence: UInt64 { firstSequence + UInt64(frames.count) - 1 }
}

/// What happened on the links since the last `events()`.
public enum LinkEvent: Equatable, Sendable {
    /// A link came up (both Hellos exchanged); numbering resumes after `peer.resumeAfter`.
    case connected(peer: String, LinkPeer)
    /// A link went down: its instances are unavailable until it is back.
    case disconnected(peer: String, reason: String)
    /// Frames for this node's instances; acknowledge them once written to an egress pipe or the spool.
    case received(peer: String, LinkReceived)
    /// The peer wrote (or spooled) every frame up to `upTo`: the router may forget them.
    case acknowledged(peer: String, upTo: UInt64)
    /// The peer's instances' availability changed, or the revision it serves.
    case health(peer: String, revision: UInt64, instances: [String: Bool])
    /// A connection was refused before it became a link (TLS, names, protocol version). `peer` is the node
    /// dialed, or the node a Hello claimed, when known.
    case refused(peer: String?, remote: String, reason: String)
}

/// What `send` took.
public struct LinkSendResult: Equatable, Sendable {
    /// How many of the frames (from the first) were taken; the rest did not fit the window, or the link is down.
    public var accepted: Int
    /// The sequence number of the first frame taken.
    public var firstSequence: UInt64

    public init(accepted: Int, firstSequence: UInt64) {
        self.accepted = accepted
        self.firstSequence = firstSequence
    }
}

/// One link's state, for `pmm status`.
public struct LinkStatus: Equatable, Sendable {
    public var peer: String
    public var up: Bool
    /// When the link came up or went down (monotonic clock).
    public var since: ContinuousClock.Instant?
    public var unacknowledgedFrames: UInt64
    public var unacknowledgedBytes: Int
    /// The revision the peer serves (0: not known yet).
    public var peerRevision: UInt64
    /// Why it last went down.
    public var lastError: String?
}

/// Why a `LinkManager` could not start.
public enum LinkError: Error, Equatable, Sendable, CustomStringConvertible {
    case listen(address: String, reason: String)
    case tls(file: String, reason: String)
    case configuration(String)

    public var description: String {
        switch self {
        case .listen(let address, let reason):
            return "cannot listen for links on \(address): \(reason); check the node's `address` in the spec, "
                + "and that no other process (another router?) holds the port"
        case .tls(let file, let reason):
            return "cannot load \(file) for links.tls: \(reason); check the path (after ${NODE}) and that it is PEM"
        case .configuration(let reason):
            return "link configuration: \(reason)"
        }
    }
}
