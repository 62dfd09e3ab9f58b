import Foundation
import Glibc
import PMMLink
import PMMWire
import Testing

/// Two LinkManagers in this process on 127.0.0.1 with ephemeral ports: real sockets, real TLS.
@Suite(.serialized) struct LinkLoopbackTests {
    let nodes: Set = ["edge-a", "edge-b"]

    @Test func batches_flowAndAreAcknowledged() throws {
        let b = try Node("edge-b", nodes: nodes)
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        a.peer = "edge-b"
        a.outbox.append(
            contentsOf: (0..<20_000).map { LinkFrame(target: "collector-edge-b-0", bytes: numberedFrame($0)) })
        let done = pump([a, b]) { a.outbox.isEmpty && b.received.count >= 20_000 }
        #expect(done, "acked \(20_000 - a.outbox.count), received \(b.received.count)")
        #expect(b.received == Array(0..<20_000))
        guard case .connected(_, let info)? = a.events.first(where: { if case .connected = $0 { true } else { false } })
        else {
            Issue.record("no connected event: \(a.events)")
            return
        }
        #expect(info.node == "edge-b" && info.revision == 1 && info.resumeAfter == 0)
        #expect(a.manager.status().first?.unacknowledgedFrames == 0)
        a.manager.stop()
        b.manager.stop()
    }

    /// While the peer acknowledges nothing, `send` takes no more than the sender's window, and the window opens
    /// again with the acknowledgement. A receiver accepts twice its own window unacknowledged, so a sender whose
    /// window is twice the receiver's (nodes of two builds side by side, in a rollout that raised the default)
    /// fills it too, and the link stays up.
    @Test(arguments: [1, 2]) func send_whenThePeerDoesNotAcknowledge_takesNoMoreThanTheWindow(senderWindowMultiple: Int) throws {
        let window = 64 << 10
        let b = try Node("edge-b", nodes: nodes) { $0.windowBytes = window }
        b.autoAcknowledge = false
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes) { $0.windowBytes = senderWindowMultiple * window }
        #expect(pump([a, b]) { a.connected })
        let frames = (0..<10_000).map { LinkFrame(target: "t", bytes: numberedFrame($0)) }
        var taken = 0
        var firstSequence: UInt64 = 0
        pump([a, b], seconds: 2) {
            let r = a.manager.send(to: "edge-b", frames: frames[taken...])
            if taken == 0 { firstSequence = r.firstSequence }
            taken += r.accepted
            return false
        }
        let frameBytes = frames[0].bytes.count
        #expect(firstSequence == 1)
        #expect(
            taken == senderWindowMultiple * window / frameBytes,
            "took \(taken) frames of \(frameBytes) bytes into a \(senderWindowMultiple * window)-byte window")
        #expect(b.received.count == taken)
        #expect(a.manager.status()[0].unacknowledgedBytes == taken * frameBytes)
        #expect(a.connected && a.connectedCount == 1 && b.refusals.isEmpty, "\(a.events)")
        // The receiver writes them and acknowledges: the window opens again.
        b.acknowledgeAll()
        #expect(pump([a, b]) { a.manager.status()[0].unacknowledgedBytes == 0 })
        let more = a.manager.send(to: "edge-b", frames: frames[taken...])
        #expect(more.accepted == taken && more.firstSequence == UInt64(taken) + 1)
        #expect(a.connectedCount == 1)
        a.manager.stop()
        b.manager.stop()
    }

    @Test func send_whenTheLinkIsDown_takesNothing() throws {
        let a = try Node("edge-a", peers: ["edge-b": LinkAddress(host: "127.0.0.1", port: 1)], nodes: nodes)
        #expect(a.manager.send(to: "edge-b", frames: [LinkFrame(target: "t", bytes: numberedFrame(0))]).accepted == 0)
        #expect(a.manager.send(to: "nobody", frames: [LinkFrame(target: "t", bytes: numberedFrame(0))]).accepted == 0)
        a.manager.stop()
    }

    @Test func afterStop_everyCallIsHarmless() throws {
        let b = try Node("edge-b", nodes: nodes)
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        #expect(pump([a, b]) { a.connected })
        a.manager.stop()
        a.manager.stop()
        #expect(a.manager.send(to: "edge-b", frames: [LinkFrame(target: "t", bytes: numberedFrame(0))]).accepted == 0)
        a.manager.acknowledge(peer: "edge-b", stream: 1, upTo: 1)
        a.manager.announceHealth(["x": true])
        a.manager.updateRevision(2)
        #expect(a.manager.events().isEmpty)
        b.manager.stop()
    }

    @Test func aPeerThatDiesAndComesBack_isDialedAgain_andNothingHeldIsLost() throws {
        var b = try Node("edge-b", nodes: nodes)
        b.autoAcknowledge = false
        let port = b.manager.listeningPort
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        a.peer = "edge-b"
        a.outbox.append(contentsOf: (0..<5000).map { LinkFrame(target: "t", bytes: numberedFrame($0)) })
        #expect(pump([a, b]) { b.received.count == 5000 })
        // b wrote the first 1000 only when it dies.
        guard case .received(_, let batch)? = b.events.first(where: { if case .received = $0 { true } else { false } })
        else {
            Issue.record("nothing received")
            return
        }
        b.manager.acknowledge(peer: "edge-a", stream: batch.stream, upTo: 1000)
        #expect(pump([a, b]) { a.outbox.count == 4000 })
        b.manager.stop()
        #expect(pump([a]) { !a.connected })
        // A new router on the same port remembers nothing: everything a still holds goes again, numbered from 1.
        b = try Node("edge-b", nodes: nodes, listen: LinkAddress(host: "127.0.0.1", port: port))
        let done = pump([a, b], seconds: 20) { a.outbox.isEmpty }
        #expect(done, "a holds \(a.outbox.count) frames")
        #expect(a.connectedCount == 2)
        #expect(b.received == Array(1000..<5000))
        a.manager.stop()
        b.manager.stop()
    }

    @Test func hello_fromANodeNotInTheSpec_isRefusedWithTheReason() throws {
        let b = try Node("edge-b", nodes: ["edge-b", "edge-c"])
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        #expect(pump([a, b], seconds: 3) { !b.refusals.isEmpty })
        #expect(b.refusals.first?.contains("node edge-a is not one of the spec's nodes") == true, "\(b.refusals)")
        #expect(!a.connected)
        a.manager.stop()
        b.manager.stop()
    }

    @Test(arguments: [
        ("garbage", [UInt8](repeating: 0xff, count: 64), "not a varint"),
        ("oversized", [0x80, 0x80, 0x80, 0x80, 0x7f], "over the limit"),
        ("an ack before the hello", [0x02, 0x1a, 0x00], "before its Hello"),
    ])
    func bytesThatAreNoLinkProtocol_closeThatConnection_andTheLinksGoOn(name: String, bytes: [UInt8], reason: String)
        throws
    {
        let b = try Node("edge-b", nodes: nodes)
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(b.manager.listeningPort).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        #expect(connected == 0)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
        #expect(pump([b], seconds: 3) { !b.refusals.isEmpty }, "\(name)")
        #expect(b.refusals.first?.contains(reason) == true, "\(b.refusals)")
        // The connection is closed: a read sees the Goodbye, then end of file.
        var buffer = [UInt8](repeating: 0, count: 4096)
        var total = 0
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            total += n
        }
        #expect(total > 0)
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        #expect(pump([a, b]) { a.connected })
        a.manager.stop()
        b.manager.stop()
    }

    @Test func health_andRevision_reachThePeer() throws {
        let b = try Node("edge-b", nodes: nodes)
        b.manager.announceHealth(["collector-edge-b-0": true])
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        #expect(pump([a, b]) { a.connected && b.connected })
        guard case .connected(_, let info)? = a.events.first(where: { if case .connected = $0 { true } else { false } })
        else {
            Issue.record("no connected event")
            return
        }
        #expect(info.health == ["collector-edge-b-0": true])
        b.manager.announceHealth(["collector-edge-b-0": false])
        b.manager.updateRevision(9)
        #expect(
            pump([a, b]) {
                a.events.contains(.health(peer: "edge-b", revision: 9, instances: ["collector-edge-b-0": false]))
            })
        #expect(pump([a, b]) { a.manager.status()[0].peerRevision == 9 })
        a.manager.stop()
        b.manager.stop()
    }
}

/// Mutual TLS on loopback with certificates made by openssl at test time.
@Suite(.serialized, .enabled(if: commandExists("openssl"), "needs openssl (scripts/setup installs it)"))
struct LinkTLSTests {
    let nodes: Set = ["edge-a", "edge-b", "edge-c"]

    @Test func tls_withCertificatesOfTheSpecsCA_linksUp_andCarriesFrames() throws {
        let pki = try TestPKI()
        let b = try Node("edge-b", nodes: nodes, tls: try pki.issue(commonName: "edge-b", dnsNames: ["edge-b"]))
        // edge-a's name only in its common name: that counts too.
        let a = try Node(
            "edge-a", peers: ["edge-b": b.address], nodes: nodes, tls: try pki.issue(commonName: "edge-a", dnsNames: [])
        )
        a.peer = "edge-b"
        a.outbox.append(contentsOf: (0..<2000).map { LinkFrame(target: "t", bytes: numberedFrame($0)) })
        #expect(pump([a, b]) { a.outbox.isEmpty && b.received.count == 2000 })
        #expect(a.refusals.isEmpty && b.refusals.isEmpty, "\(a.refusals) \(b.refusals)")
        a.manager.stop()
        b.manager.stop()
    }

    @Test func tls_aCertificateFromAnotherCA_isRefused() throws {
        let pki = try TestPKI()
        let stranger = try TestPKI(name: "stranger-ca")
        let b = try Node("edge-b", nodes: nodes, tls: try pki.issue(commonName: "edge-b", dnsNames: ["edge-b"]))
        var strangerTLS = try stranger.issue(commonName: "edge-a", dnsNames: ["edge-a"])
        strangerTLS.ca = pki.ca  // trusts the right CA, but its own certificate is signed by another
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes, tls: strangerTLS)
        #expect(pump([a, b], seconds: 3) { !b.refusals.isEmpty })
        #expect(b.refusals.first?.contains("TLS") == true, "\(b.refusals)")
        #expect(!a.connected && !b.connected)
        a.manager.stop()
        b.manager.stop()
    }

    @Test func tls_aCertificateWhoseNameIsNoNode_isRefused() throws {
        let pki = try TestPKI()
        let b = try Node("edge-b", nodes: nodes, tls: try pki.issue(commonName: "edge-b", dnsNames: ["edge-b"]))
        let a = try Node(
            "edge-a", peers: ["edge-b": b.address], nodes: nodes,
            tls: try pki.issue(commonName: "mallory", dnsNames: ["mallory"]))
        #expect(pump([a, b], seconds: 3) { !b.refusals.isEmpty })
        #expect(b.refusals.first?.contains("mallory, which is no node of the spec") == true, "\(b.refusals)")
        #expect(!a.connected && !b.connected)
        a.manager.stop()
        b.manager.stop()
    }

    @Test func tls_whenTheDialedPeerPresentsAnotherNodesCertificate_isRefused() throws {
        let pki = try TestPKI()
        // edge-b's address answers with edge-c's certificate (a node of the spec, but not the one dialed).
        let impostor = try Node("edge-b", nodes: nodes, tls: try pki.issue(commonName: "edge-c", dnsNames: ["edge-c"]))
        let a = try Node(
            "edge-a", peers: ["edge-b": impostor.address], nodes: nodes,
            tls: try pki.issue(commonName: "edge-a", dnsNames: ["edge-a"]))
        #expect(pump([a, impostor], seconds: 3) { !a.refusals.isEmpty })
        #expect(
            a.refusals.first?.contains("dialed node edge-b, but its certificate names edge-c") == true, "\(a.refusals)")
        #expect(!a.connected)
        a.manager.stop()
        impostor.manager.stop()
    }

    @Test func tls_whenAFileIsMissing_initThrowsNamingIt() throws {
        let tls = LinkTLS(ca: "/nonexistent/ca.pem", certificate: "/nonexistent/a.pem", key: "/nonexistent/a-key.pem")
        #expect {
            _ = try Node("edge-a", nodes: nodes, tls: tls)
        } throws: { error in
            (error as? LinkError)?.description.contains("/nonexistent/a.pem") == true
        }
    }
}

/// A hand-made peer on a raw socket: says what a real router would not, and reads what comes back.
final class RawPeer {
    let fd: Int32

    init(port: Int) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard result == 0 else { throw CommandFailed(command: ["connect"], status: errno, output: "") }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
    }

    deinit { close(fd) }

    func send(_ message: Pmm_V1_LinkMessage) {
        var bytes: [UInt8] = []
        LinkCodec.encode(message, into: &bytes)
        _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
    }

    func hello(node: String, version: UInt32 = linkProtocolVersion) {
        var message = Pmm_V1_LinkMessage()
        message.hello.node = node
        message.hello.protocolVersion = version
        message.hello.incarnation = 77
        send(message)
    }

    /// Reads messages until the connection closes (or 5 s pass).
    func readAll() -> [LinkInbound] {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { break }
            bytes += buffer[..<n]
        }
        return (try? decodeAll(bytes)) ?? []
    }

    /// Reads until the peer closes the connection (true) or 5 s pass (false).
    func closedByPeer() -> Bool {
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = read(fd, &buffer, buffer.count)
            if n == 0 { return true }
            if n < 0 { return errno == ECONNRESET }
        }
    }

    /// Reads until one message has arrived.
    func readOne() -> LinkInbound? {
        var bytes: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            if let messages = try? decodeAll(bytes), let first = messages.first { return first }
            let n = read(fd, &buffer, buffer.count)
            if n <= 0 { return nil }
            bytes += buffer[..<n]
        }
    }
}

@Suite(.serialized) struct LinkHelloTests {
    let nodes: Set = ["edge-a", "edge-b", "edge-c"]

    @Test func hello_ofAnotherProtocolVersion_isRefusedWithAGoodbyeThatSaysWhy() throws {
        let b = try Node("edge-b", nodes: nodes)
        let raw = try RawPeer(port: b.manager.listeningPort)
        raw.hello(node: "edge-a", version: 2)
        let answer = raw.readAll()
        guard case .goodbye(let reason)? = answer.last else {
            Issue.record("no goodbye: \(answer)")
            return
        }
        #expect(reason.contains("speaks link protocol version 2, this router 1"))
        #expect(pump([b], seconds: 2) { !b.refusals.isEmpty })
        b.manager.stop()
    }

    @Test func hello_fromANodeThatShouldBeDialed_isRefused_oneLinkPerPair() throws {
        let b = try Node("edge-b", nodes: nodes)
        let raw = try RawPeer(port: b.manager.listeningPort)
        raw.hello(node: "edge-c")  // edge-b sorts first: edge-b dials edge-c, never the other way
        guard case .goodbye(let reason)? = raw.readAll().last else {
            Issue.record("no goodbye")
            return
        }
        #expect(reason.contains("node edge-c must not dial edge-b"))
        b.manager.stop()
    }

    @Test func hello_fromTheRightfulDialerAgain_replacesTheHalfOpenLink() throws {
        let b = try Node("edge-b", nodes: nodes)
        let first = try RawPeer(port: b.manager.listeningPort)
        first.hello(node: "edge-a")
        guard case .hello(let answer)? = first.readOne() else {
            Issue.record("no hello back")
            return
        }
        #expect(answer.node == "edge-b" && answer.protocolVersion == linkProtocolVersion)
        #expect(pump([b]) { b.connected })
        // The same node dials again (it lost the first connection, say, to a cut cable b has not noticed).
        let second = try RawPeer(port: b.manager.listeningPort)
        second.hello(node: "edge-a")
        guard case .hello? = second.readOne() else {
            Issue.record("no hello back on the second connection")
            return
        }
        #expect(pump([b]) { b.connectedCount == 2 })
        #expect(b.events.contains(.disconnected(peer: "edge-a", reason: "replaced by a new connection")))
        #expect(first.closedByPeer(), "the replaced connection is closed")
        var message = Pmm_V1_LinkMessage()
        message.batch.firstSequence = 1
        var frame = Pmm_V1_LinkFrame()
        frame.target = "t"
        frame.frame = Data(numberedFrame(5))
        message.batch.frames = [frame]
        second.send(message)
        #expect(pump([b]) { b.received == [5] })
        b.manager.stop()
    }

    @Test func reconnect_helloSaysTheHighestFrameReceived_andAResendsRepeatsAreDropped() throws {
        let b = try Node("edge-b", nodes: nodes)
        b.autoAcknowledge = false
        func batch(first: UInt64, _ numbers: [Int]) -> Pmm_V1_LinkMessage {
            var message = Pmm_V1_LinkMessage()
            message.batch.firstSequence = first
            message.batch.frames = numbers.map { n in
                var frame = Pmm_V1_LinkFrame()
                frame.target = "t"
                frame.frame = Data(numberedFrame(n))
                return frame
            }
            return message
        }
        let first = try RawPeer(port: b.manager.listeningPort)
        first.hello(node: "edge-a")
        _ = first.readOne()
        first.send(batch(first: 1, [1, 2, 3]))
        #expect(pump([b]) { b.received == [1, 2, 3] })
        // b's router wrote frames 1 and 2 only, then the connection was lost.
        let stream = b.unacknowledged.first?.stream ?? 0
        b.manager.acknowledge(peer: "edge-a", stream: stream, upTo: 2)
        let second = try RawPeer(port: b.manager.listeningPort)
        second.hello(node: "edge-a")  // the same incarnation (77): the numbering goes on
        guard case .hello(let answer)? = second.readOne() else {
            Issue.record("no hello back")
            return
        }
        // The highest received, not the highest acknowledged: b still holds frame 3 (its router acknowledges it
        // when done), so a sender numbers what it sends next from 4, and a new frame is never taken for a repeat.
        #expect(answer.receivedIncarnation == 77 && answer.receivedUpTo == 3)
        // A sender that resends from 3 anyway: frame 3 reached b's router already and is not handed over again.
        second.send(batch(first: 3, [3, 4]))
        #expect(pump([b]) { b.received == [1, 2, 3, 4] })
        #expect(pump([b], seconds: 0.3) { false } == false)
        #expect(b.received == [1, 2, 3, 4])
        b.manager.stop()
    }

    @Test func stop_saysGoodbye_andThePeerSeesWhy() throws {
        let b = try Node("edge-b", nodes: nodes)
        let a = try Node("edge-a", peers: ["edge-b": b.address], nodes: nodes)
        #expect(pump([a, b]) { a.connected && b.connected })
        a.manager.stop()
        #expect(pump([b]) { !b.connected })
        #expect(
            b.events.contains(.disconnected(peer: "edge-a", reason: "the peer said goodbye: node edge-a is stopping")))
        b.manager.stop()
    }

    @Test func batch_withAGapInTheNumbering_closesTheLink() throws {
        let b = try Node("edge-b", nodes: nodes)
        let raw = try RawPeer(port: b.manager.listeningPort)
        raw.hello(node: "edge-a")
        _ = raw.readOne()
        var message = Pmm_V1_LinkMessage()
        message.batch.firstSequence = 3
        var frame = Pmm_V1_LinkFrame()
        frame.frame = Data(numberedFrame(1))
        message.batch.frames = [frame]
        raw.send(message)
        guard case .goodbye(let reason)? = raw.readAll().last else {
            Issue.record("no goodbye")
            return
        }
        #expect(reason.contains("sent frame 3 when 1 was next"))
        #expect(b.received.isEmpty)
        b.manager.stop()
    }
}
