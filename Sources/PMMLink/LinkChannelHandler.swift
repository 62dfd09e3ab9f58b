import Logging
import NIOCore
import NIOSSL
import NIOTLS
import PMMWire

/// One connection, from TCP (and TLS) up to a link: certificate names, the Hello exchange, then messages.
///
/// The dialer speaks first: once connected (after the TLS handshake, never before, so nothing piles up inside
/// NIOSSLHandler) it sends its Hello; the acceptor checks it and answers with its own, then both sides are up.
/// Lives on the links' event loop.
final class LinkChannelHandler: ChannelInboundHandler {
    typealias InboundIn = LinkInbound
    typealias OutboundOut = ByteBuffer

    let engine: LinkEngine
    /// The peer this node dialed; nil for an accepted connection.
    let dialed: String?
    let tls: Bool
    /// The spec's nodes the peer's certificate names (after the TLS handshake).
    var certificateNodes: Set<String>?
    /// The peer, once its Hello was accepted.
    var peer: String?
    var generation: UInt64 = 0
    var context: ChannelHandlerContext?
    var helloSent = false
    var lastRead = NIODeadline.now()
    var wroteSinceTick = false
    var timer: RepeatedTask?
    var closeReason: String?

    init(engine: LinkEngine, dialed: String?, tls: Bool) {
        self.engine = engine
        self.dialed = dialed
        self.tls = tls
    }

    var remote: String { context?.channel.remoteAddress?.description ?? "?" }
    var isWritable: Bool { context?.channel.isWritable ?? false }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
    }

    func channelActive(context: ChannelHandlerContext) {
        lastRead = .now()
        let interval = TimeAmount.nanoseconds(engine.configuration.heartbeatInterval.nanoseconds)
        let bound = NIOLoopBound(self, eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleRepeatedTask(initialDelay: interval, delay: interval) { _ in
            bound.value.tick()
        }
        if !tls && dialed != nil { sendHello() }
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        timer?.cancel()
        timer = nil
        engine.closed(self, channel: context.channel, reason: closeReason ?? "the connection closed")
        self.context = nil
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent {
            do {
                let certificate = try context.pipeline.syncOperations.handler(type: NIOSSLHandler.self).peerCertificate
                guard let certificate else { return refuse("the peer presented no certificate") }
                certificateNodes = try LinkNames.check(
                    certificateNames: Self.names(of: certificate), knownNodes: engine.configuration.knownNodes,
                    expected: dialed)
            } catch let refusal as LinkNames.Refusal {
                return refuse(refusal.description)
            } catch {
                return refuse("cannot read the peer's certificate: \(error)")
            }
            if dialed != nil { sendHello() }
        }
        context.fireUserInboundEventTriggered(event)
    }

    /// The certificate's common names and DNS subject alternative names.
    static func names(of certificate: NIOSSLCertificate) -> [String] {
        var names = (try? LinkNames.subjectCommonNames(der: certificate.toDERBytes())) ?? []
        for name in certificate._subjectAlternativeNames() where name.nameType == .dnsName {
            names.append(name.contents.withUnsafeBufferPointer { String(decoding: $0, as: UTF8.self) })
        }
        return names
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        lastRead = .now()
        let message = unwrapInboundIn(data)
        guard peer != nil else {
            guard case .hello(let hello) = message else {
                return refuse("the peer sent a message before its Hello")
            }
            if tls && certificateNodes == nil { return refuse("a Hello before the TLS handshake completed") }
            if let reason = engine.check(hello: hello, handler: self) {
                return refuse(reason, peer: hello.node)
            }
            peer = hello.node
            if dialed == nil { sendHello() }
            engine.up(self, hello: hello)
            return
        }
        switch message {
        case .hello: fail("the peer sent a second Hello")
        case .batch(let first, let frames):
            do { try engine.received(self, firstSequence: first, frames: frames) } catch { fail(error.description) }
        case .ack(let upTo):
            if !engine.acknowledged(self, upTo: upTo) { fail("the peer acknowledged frame \(upTo), never sent") }
        case .health(let health): engine.health(self, health)
        case .goodbye(let reason):
            closeReason = "the peer said goodbye: \(reason)"
            context.close(promise: nil)
        case .heartbeat: break
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable, let peer { engine.flush(peer) }
        context.fireChannelWritabilityChanged()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        let reason: String
        if let error = error as? LinkCodecError {
            reason = error.description
        } else if let error = error as? NIOSSLError {
            reason = "TLS: \(error) (a certificate not signed by links.tls.ca, or not TLS at all)"
        } else if let error = error as? BoringSSLError {
            reason = "TLS: \(error) (a certificate not signed by links.tls.ca?)"
        } else {
            reason = "\(error)"
        }
        if peer == nil {
            refuse(reason, peer: dialed)
        } else {
            fail(reason)
        }
    }

    // MARK: - Writing

    func write(_ message: Pmm_V1_LinkMessage, flush: Bool = true) {
        guard let context else { return }
        var bytes: [UInt8] = []
        LinkCodec.encode(message, into: &bytes)
        context.write(wrapOutboundOut(context.channel.allocator.buffer(bytes: bytes)), promise: nil)
        if flush { context.flush() }
        wroteSinceTick = true
    }

    func write(encoded: [ByteBuffer]) {
        guard let context else { return }
        for buffer in encoded {
            context.write(wrapOutboundOut(buffer), promise: nil)
        }
        context.flush()
        wroteSinceTick = true
    }

    private func sendHello() {
        helloSent = true
        write(engine.hello(for: dialed ?? peer))
    }

    /// Heartbeats, and the idle timeout that notices a cut cable.
    private func tick() {
        guard let context else { return }
        let idle = NIODeadline.now() - lastRead
        let limit = TimeAmount.nanoseconds(engine.configuration.idleTimeout.nanoseconds)
        if idle > limit {
            let tenths = idle.nanoseconds / 100_000_000
            let reason = "heard nothing from the peer for \(tenths / 10).\(tenths % 10) s (a cut cable or a hung peer)"
            return peer == nil ? refuse(reason, peer: dialed) : fail(reason)
        }
        if helloSent && !wroteSinceTick {
            var heartbeat = Pmm_V1_LinkMessage()
            heartbeat.heartbeat = Pmm_V1_LinkHeartbeat()
            write(heartbeat)
        }
        wroteSinceTick = false
        _ = context
    }

    // MARK: - Closing

    /// Refuses the connection before it became a link: a Goodbye with the reason, an event, and close.
    func refuse(_ reason: String, peer claimed: String? = nil) {
        guard closeReason == nil, let context else { return }
        closeReason = reason
        engine.refused(peer: claimed ?? dialed, remote: remote, reason: reason)
        var goodbye = Pmm_V1_LinkMessage()
        goodbye.goodbye.reason = "refused by \(engine.configuration.node): \(reason)"
        write(goodbye)
        context.close(promise: nil)
    }

    /// Closes a link on a protocol error.
    func fail(_ reason: String) {
        guard closeReason == nil, let context else { return }
        closeReason = reason
        engine.logger.warning("closing link", metadata: ["peer": "\(peer ?? "?")", "reason": "\(reason)"])
        var goodbye = Pmm_V1_LinkMessage()
        goodbye.goodbye.reason = reason
        write(goodbye)
        context.close(promise: nil)
    }

    /// Another connection from the same peer took over.
    func replaced(reason: String) {
        closeReason = reason
        peer = nil
        context?.close(promise: nil)
    }
}
