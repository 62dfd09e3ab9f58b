import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import PMMWire
import Synchronization

/// Everything of the links that lives on the event loop: the listener, the connections, dialing and backoff.
/// Confined to the loop (reached through `NIOLoopBound`); shares only `LinkShared` with the router's thread.
final class LinkEngine {
    let configuration: LinkConfiguration
    var logger: Logger
    let shared: LinkShared
    let loop: any EventLoop
    let ssl: (server: NIOSSLContext, client: NIOSSLContext)?
    let incarnation: UInt64
    /// Where received batches' buffers come from.
    let buffers: BufferPool

    /// The current link to each peer (Hello exchanged).
    var links: [String: LinkChannelHandler] = [:]
    /// Every open connection, up or not, so `stop` can close them.
    var connections: [ObjectIdentifier: any Channel] = [:]
    var backoff: [String: Backoff] = [:]
    /// Dials scheduled after a backoff delay.
    var dials: [String: Scheduled<Void>] = [:]
    var serverChannel: (any Channel)?
    var nextGeneration: UInt64 = 1
    var stopped = false

    init(
        configuration: LinkConfiguration, logger: Logger, shared: LinkShared, loop: any EventLoop,
        ssl: (server: NIOSSLContext, client: NIOSSLContext)?, incarnation: UInt64, buffers: BufferPool
    ) {
        self.buffers = buffers
        self.configuration = configuration
        self.logger = logger
        self.logger[metadataKey: "node"] = "\(configuration.node)"
        self.shared = shared
        self.loop = loop
        self.ssl = ssl
        self.incarnation = incarnation
    }

    static func makeSSLContexts(_ tls: LinkTLS) throws(LinkError) -> (server: NIOSSLContext, client: NIOSSLContext) {
        let chain: [NIOSSLCertificate]
        let key: NIOSSLPrivateKey
        do { chain = try NIOSSLCertificate.fromPEMFile(tls.certificate) } catch {
            throw .tls(file: tls.certificate, reason: "\(error)")
        }
        if chain.isEmpty { throw .tls(file: tls.certificate, reason: "no certificate in it") }
        do { key = try NIOSSLPrivateKey(file: tls.key, format: .pem) } catch {
            throw .tls(file: tls.key, reason: "\(error)")
        }
        do {
            let roots = try NIOSSLCertificate.fromPEMFile(tls.ca)
            if roots.isEmpty { throw LinkError.tls(file: tls.ca, reason: "no certificate in it") }
        } catch let error as LinkError { throw error } catch { throw .tls(file: tls.ca, reason: "\(error)") }
        var server = TLSConfiguration.makeServerConfigurationWithMTLS(
            certificateChain: chain.map { .certificate($0) }, privateKey: .privateKey(key), trustRoots: .file(tls.ca))
        server.minimumTLSVersion = .tlsv12
        var client = TLSConfiguration.makeClientConfiguration()
        client.certificateChain = chain.map { .certificate($0) }
        client.privateKey = .privateKey(key)
        client.trustRoots = .file(tls.ca)
        // The chain is checked against `ca`; the name is checked against the spec's nodes by the link itself.
        client.certificateVerification = .noHostnameVerification
        client.minimumTLSVersion = .tlsv12
        // A link closed for silence (a cut cable) must not wait 5 s more for the peer's close_notify before the
        // router hears it is down.
        server.shutdownTimeout = .milliseconds(500)
        client.shutdownTimeout = .milliseconds(500)
        do {
            return (try NIOSSLContext(configuration: server), try NIOSSLContext(configuration: client))
        } catch {
            throw .tls(file: tls.certificate, reason: "\(error)")
        }
    }

    // MARK: - Listening and dialing

    func listen() -> EventLoopFuture<Int> {
        let bound = NIOLoopBound(self, eventLoop: loop)
        let maximum = configuration.maximumMessageSize
        let buffers = self.buffers
        let server = ssl?.server
        return ServerBootstrap(group: loop)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let engine = bound.value
                    engine.opened(channel)
                    if let server {
                        try channel.pipeline.syncOperations.addHandler(NIOSSLServerHandler(context: server))
                    }
                    try channel.pipeline.syncOperations.addHandlers(
                        LinkMessageReader(maximumMessageSize: maximum, buffers: buffers),
                        LinkChannelHandler(engine: engine, dialed: nil, tls: server != nil))
                }
            }
            .bind(host: configuration.listen.host, port: configuration.listen.port)
            .map { channel in
                bound.value.serverChannel = channel
                return channel.localAddress?.port ?? 0
            }
    }

    func start() {
        for peer in configuration.peers.keys.sorted() where LinkNames.dials(configuration.node, peer) {
            if configuration.knownNodes.contains(peer) { dial(peer) }
        }
    }

    func dial(_ peer: String) {
        guard !stopped, links[peer] == nil, let address = configuration.peers[peer] else { return }
        let bound = NIOLoopBound(self, eventLoop: loop)
        let maximum = configuration.maximumMessageSize
        let buffers = self.buffers
        let client = ssl?.client
        let bootstrap = ClientBootstrap(group: loop)
            .connectTimeout(.nanoseconds(configuration.connectTimeout.nanoseconds))
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    let engine = bound.value
                    engine.opened(channel)
                    if let client {
                        try channel.pipeline.syncOperations.addHandler(
                            try NIOSSLClientHandler(context: client, serverHostname: nil))
                    }
                    try channel.pipeline.syncOperations.addHandlers(
                        LinkMessageReader(maximumMessageSize: maximum, buffers: buffers),
                        LinkChannelHandler(engine: engine, dialed: peer, tls: client != nil))
                }
            }
        // An IP address is connected to directly; a host name goes through NIO's resolver (happy eyeballs).
        let connecting: EventLoopFuture<any Channel>
        if let ip = try? SocketAddress(ipAddress: address.host, port: address.port) {
            connecting = bootstrap.connect(to: ip)
        } else {
            connecting = bootstrap.connect(host: address.host, port: address.port)
        }
        connecting.whenFailure { error in
            let engine = bound.value
            engine.logger.debug(
                "dialing failed", metadata: ["peer": "\(peer)", "address": "\(address)", "error": "\(error)"])
            engine.redial(peer)
        }
    }

    /// Dials `peer` again after its backoff delay.
    func redial(_ peer: String) {
        guard !stopped, LinkNames.dials(configuration.node, peer) else { return }
        var schedule = backoff[peer] ?? configuration.backoff
        let delay = schedule.nextDelay(random: Double.random(in: 0..<1))
        backoff[peer] = schedule
        let bound = NIOLoopBound(self, eventLoop: loop)
        dials[peer]?.cancel()
        dials[peer] = loop.scheduleTask(in: .nanoseconds(delay.nanoseconds)) {
            bound.value.dials[peer] = nil
            bound.value.dial(peer)
        }
    }

    // MARK: - Connections

    func opened(_ channel: any Channel) {
        let id = ObjectIdentifier(channel)
        connections[id] = channel
        let bound = NIOLoopBound(self, eventLoop: loop)
        channel.closeFuture.whenComplete { _ in bound.value.connections[id] = nil }
    }

    /// A connection closed, whether it was a link or not.
    func closed(_ handler: LinkChannelHandler, channel: any Channel, reason: String) {
        if let peer = handler.peer, links[peer] === handler {
            links[peer] = nil
            logger.info("link down", metadata: ["peer": "\(peer)", "reason": "\(reason)"])
            shared.update { state in
                state.peers[peer]!.up = false
                state.peers[peer]!.awaitingRouter = false
                state.peers[peer]!.pendingWrites = []
                state.peers[peer]!.pendingBytes = 0
                state.peers[peer]!.pendingAck = nil
                state.peers[peer]!.since = .now
                state.peers[peer]!.lastError = reason
                state.post(.disconnected(peer: peer, reason: reason))
            }
        }
        if let dialed = handler.dialed, links[dialed] == nil { redial(dialed) }
    }

    /// A connection was refused before it became a link.
    func refused(peer: String?, remote: String, reason: String) {
        logger.warning(
            "link refused", metadata: ["peer": "\(peer ?? "?")", "remote": "\(remote)", "reason": "\(reason)"])
        shared.update { $0.post(.refused(peer: peer, remote: remote, reason: reason)) }
    }

    /// Checks a peer's Hello; nil when it is acceptable, else why not.
    func check(hello: Pmm_V1_LinkHello, handler: LinkChannelHandler) -> String? {
        let node = hello.node
        let me = configuration.node
        if hello.protocolVersion != linkProtocolVersion {
            return "node \(node) speaks link protocol version \(hello.protocolVersion), this router "
                + "\(linkProtocolVersion): upgrade one of them"
        }
        if node == me { return "the peer calls itself \(node), this node's own name: two nodes with one name?" }
        if !configuration.knownNodes.contains(node) {
            return
                "node \(node) is not one of the spec's nodes (\(configuration.knownNodes.sorted().joined(separator: ", ")))"
        }
        if let names = handler.certificateNodes, !names.contains(node) {
            return "the Hello says node \(node), its certificate names \(names.sorted().joined(separator: ", "))"
        }
        if let dialed = handler.dialed {
            if node != dialed { return "dialed node \(dialed), the Hello says \(node)" }
        } else if !LinkNames.dials(node, me) {
            return
                "node \(node) must not dial \(me): of two nodes the name that sorts first dials, so \(me) dials \(node)"
        }
        return nil
    }

    /// Both Hellos are exchanged: the connection becomes the link to `peer`, replacing any older one (a dialer
    /// dials again only after losing its connection, so an older one is a half-open leftover of a cut cable).
    func up(_ handler: LinkChannelHandler, hello: Pmm_V1_LinkHello) {
        let peer = hello.node
        if let old = links[peer] {
            links[peer] = nil
            old.replaced(reason: "replaced by a new connection from \(peer)")
            shared.update { state in
                state.peers[peer]!.up = false
                state.post(.disconnected(peer: peer, reason: "replaced by a new connection"))
            }
        }
        let generation = nextGeneration
        nextGeneration += 1
        handler.generation = generation
        links[peer] = handler
        backoff[peer]?.reset()
        var health: [String: Bool] = [:]
        for h in hello.health { health[h.instance] = h.available }
        let resumeClaim = hello.receivedIncarnation == incarnation ? hello.receivedUpTo : 0
        shared.update { state in
            var p = state.peers[peer]!
            state.peers[peer] = nil  // mutate a unique copy; put it back below
            p.up = true
            p.generation = generation
            p.awaitingRouter = true
            p.pendingWrites = []
            p.pendingBytes = 0
            p.pendingAck = nil
            p.flushScheduled = false
            p.since = .now
            p.peerRevision = hello.revision
            let resume = p.sender.reconnected(resumeAfter: resumeClaim)
            p.receiver.peerIncarnation(hello.incarnation)
            state.peers[peer] = p
            state.post(
                .connected(
                    peer: peer,
                    LinkPeer(
                        node: peer, revision: hello.revision, protocolVersion: hello.protocolVersion, health: health,
                        resumeAfter: resume, generation: generation)))
        }
        logger.info("link up", metadata: ["peer": "\(peer)", "revision": "\(hello.revision)"])
    }

    /// This node's Hello to `peer` (nil for an acceptor that does not know it yet: then it says nothing
    /// received).
    func hello(for peer: String?) -> Pmm_V1_LinkMessage {
        var hello = Pmm_V1_LinkHello()
        hello.node = configuration.node
        hello.protocolVersion = linkProtocolVersion
        hello.incarnation = incarnation
        shared.update { state in
            hello.revision = state.revision
            hello.health = Self.healthList(state.health)
            if let peer, let p = state.peers[peer] {
                hello.receivedIncarnation = p.receiver.incarnation
                hello.receivedUpTo = p.receiver.highestReceived
            }
        }
        var message = Pmm_V1_LinkMessage()
        message.hello = hello
        return message
    }

    static func healthList(_ health: [String: Bool]) -> [Pmm_V1_LinkInstanceHealth] {
        health.keys.sorted().map { name in
            var h = Pmm_V1_LinkInstanceHealth()
            h.instance = name
            h.available = health[name]!
            return h
        }
    }

    func received(
        _ handler: LinkChannelHandler, firstSequence: UInt64, frames: LinkFrames
    ) throws(ReceiveLedger.Violation) {
        guard let peer = handler.peer, links[peer] === handler else { return }
        // A closure, not a key path: `map(\.range.count)` projected a key path per frame, through the runtime
        // (a tenth of the receiving node's CPU in `pmm bench --link`).
        let sizes = frames.entries.map { $0.range.count }
        let (stream, duplicates) = try shared.update { (state) throws(ReceiveLedger.Violation) in
            let duplicates = try state.peers[peer]!.receiver.receive(firstSequence: firstSequence, sizes: sizes)
            return (state.peers[peer]!.receiver.incarnation, duplicates)
        }
        guard duplicates < frames.count else { return }
        // Only this loop thread changes the ledger and posts received events: two short locks keep their order.
        let received = LinkReceived(
            stream: stream, firstSequence: firstSequence + UInt64(duplicates),
            frames: duplicates == 0 ? frames : frames.dropping(duplicates))
        shared.update { $0.post(.received(peer: peer, received)) }
    }

    /// Returns false for an acknowledgement of frames never sent.
    func acknowledged(_ handler: LinkChannelHandler, upTo: UInt64) -> Bool {
        guard let peer = handler.peer, links[peer] === handler else { return true }
        return shared.update { state in
            let before = state.peers[peer]!.sender.acknowledgedUpTo
            guard state.peers[peer]!.sender.acknowledge(upTo: upTo) else { return false }
            if upTo > before { state.post(.acknowledged(peer: peer, upTo: upTo)) }
            return true
        }
    }

    func health(_ handler: LinkChannelHandler, _ health: Pmm_V1_LinkHealth) {
        guard let peer = handler.peer, links[peer] === handler else { return }
        var instances: [String: Bool] = [:]
        for h in health.instances { instances[h.instance] = h.available }
        shared.update { state in
            state.peers[peer]!.peerRevision = health.revision
            state.post(.health(peer: peer, revision: health.revision, instances: instances))
        }
    }

    func broadcastHealth() {
        var message = Pmm_V1_LinkMessage()
        shared.update { state in
            message.health.revision = state.revision
            message.health.instances = Self.healthList(state.health)
        }
        for handler in links.values { handler.write(message) }
    }

    /// Writes what the router queued for `peer`: the pending Ack, then Batches up to `burstBytes`; the rest in a
    /// later tick (or when the channel is writable again).
    func flush(_ peer: String) {
        guard let handler = links[peer] else {
            shared.update { $0.peers[peer]?.flushScheduled = false }
            return
        }
        let writable = handler.isWritable
        let burst = configuration.burstBytes
        let (ack, writes, more) = shared.update { state -> (UInt64?, [ByteBuffer], Bool) in
            guard state.peers[peer]!.generation == handler.generation else { return (nil, [], false) }
            let ack = state.peers[peer]!.pendingAck
            state.peers[peer]!.pendingAck = nil
            var writes: [ByteBuffer] = []
            if writable {
                var bytes = 0
                var n = 0
                let pending = state.peers[peer]!.pendingWrites
                while n < pending.count && bytes < burst {
                    bytes += pending[n].readableBytes
                    n += 1
                }
                writes = Array(pending[..<n])
                state.peers[peer]!.pendingWrites.removeFirst(n)
                state.peers[peer]!.pendingBytes -= bytes
            }
            let more = writable && !state.peers[peer]!.pendingWrites.isEmpty
            // Not writable: channelWritabilityChanged flushes again.
            state.peers[peer]!.flushScheduled = more
            return (ack, writes, more)
        }
        if let ack {
            var message = Pmm_V1_LinkMessage()
            message.ack.upTo = ack
            handler.write(message, flush: writes.isEmpty)
        }
        if !writes.isEmpty { handler.write(encoded: writes) }
        if more {
            let bound = NIOLoopBound(self, eventLoop: loop)
            loop.execute { bound.value.flush(peer) }
        }
    }

    func stop() -> EventLoopFuture<Void> {
        stopped = true
        for scheduled in dials.values { scheduled.cancel() }
        dials = [:]
        var goodbye = Pmm_V1_LinkMessage()
        goodbye.goodbye.reason = "node \(configuration.node) is stopping"
        for handler in links.values { handler.write(goodbye) }
        var closes: [EventLoopFuture<Void>] = []
        if let serverChannel { closes.append(serverChannel.close()) }
        for channel in connections.values { closes.append(channel.close()) }
        return EventLoopFuture.whenAllComplete(closes, on: loop).map { _ in }
    }
}

extension Duration {
    var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// NIO's face of `LinkCodec`: bytes in, `LinkInbound` messages out. A codec error closes the connection.
///
/// What arrives is gathered in a buffer of its own (from `BufferPool`), and every whole message is decoded
/// from it in place: a batch's frames stay in that buffer, which goes to the router as it is. The bytes are
/// copied once between TLS and the router's queues (NIO's `ByteToMessageHandler` gathered them in its own
/// buffer, and a batch was then copied out of it: two copies, the second 4% of the receiving node's core at
/// 4 KB frames). The start of a message not yet whole moves to a fresh buffer; the old one now belongs to the
/// batches decoded from it.
final class LinkMessageReader: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias InboundOut = LinkInbound

    let maximumMessageSize: Int
    let buffers: BufferPool
    /// Bytes received and not yet decoded, from `start` on.
    var pending: [UInt8] = []
    var start = 0
    var failed = false

    init(maximumMessageSize: Int, buffers: BufferPool) {
        self.maximumMessageSize = maximumMessageSize
        self.buffers = buffers
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !failed else { return }
        let buffer = unwrapInboundIn(data)
        if start == pending.count {
            // Nothing pending: a buffer of its own (one given back), or the one kept after small messages.
            if pending.capacity == 0 { pending = buffers.take() } else { pending.removeAll(keepingCapacity: true) }
            start = 0
        }
        buffer.withUnsafeReadableBytes { pending.append(contentsOf: $0) }
        let decoded: (messages: [LinkInbound], end: Int)
        do {
            decoded = try LinkCodec.decodeAll(sharing: pending, from: start, maximumMessageSize: maximumMessageSize)
        } catch {
            failed = true
            pending = []
            start = 0
            context.fireErrorCaught(error)
            return
        }
        guard !decoded.messages.isEmpty else { return }
        let batches = decoded.messages.contains { if case .batch = $0 { true } else { false } }
        if !batches {
            // Only small messages (acknowledgements, health): the buffer is nobody else's, and is kept.
            start = decoded.end
            if start == pending.count {
                pending.removeAll(keepingCapacity: true)
                start = 0
            }
        } else if decoded.end == pending.count {
            // Everything was decoded: the next read starts a buffer of its own.
            pending = []
            start = 0
        } else {
            var rest = buffers.take()
            pending.withUnsafeBytes { rest.append(contentsOf: UnsafeRawBufferPointer(rebasing: $0[decoded.end...])) }
            pending = rest
            start = 0
        }
        for message in decoded.messages { context.fireChannelRead(wrapInboundOut(message)) }
    }
}
