import PMMLink
import Testing

@Suite struct SendLedgerTests {
    @Test func fitting_takesFramesWhileTheWindowHasRoom() {
        var ledger = SendLedger(windowBytes: 1000)
        #expect(ledger.fitting([400, 400, 400]) == (count: 2, bytes: 800))
        let r1 = ledger.take(count: 2, bytes: 800)
        #expect(r1 == 1)
        #expect(ledger.fitting([100, 200]) == (count: 1, bytes: 100))
        let r2 = ledger.take(count: 1, bytes: 100)
        #expect(r2 == 3)
        #expect(ledger.fitting([101]).count == 0)
        #expect(ledger.unacknowledgedFrames == 3)
    }

    @Test func fitting_whenTheWindowIsEmpty_takesOneFrameLargerThanTheWindow() {
        let ledger = SendLedger(windowBytes: 100)
        #expect(ledger.fitting([500, 1]) == (count: 1, bytes: 500))
    }

    @Test func acknowledge_freesWholeTakesOnly_andRefusesFramesNeverSent() {
        var ledger = SendLedger(windowBytes: 1000)
        _ = ledger.take(count: 2, bytes: 600)  // 1, 2
        _ = ledger.take(count: 2, bytes: 400)  // 3, 4
        let r3 = ledger.acknowledge(upTo: 1)
        #expect(r3)
        #expect(ledger.unacknowledgedBytes == 1000)  // half of the first take: kept, conservatively
        let r4 = ledger.acknowledge(upTo: 3)
        #expect(r4)
        #expect(ledger.unacknowledgedBytes == 400)
        #expect(ledger.acknowledgedUpTo == 3)
        let r5 = ledger.acknowledge(upTo: 5)
        #expect(!r5)
        let r6 = ledger.acknowledge(upTo: 2)
        #expect(r6)  // old news: fine, changes nothing
        #expect(ledger.acknowledgedUpTo == 3)
        let r7 = ledger.acknowledge(upTo: 4)
        #expect(r7)
        #expect(ledger.unacknowledgedBytes == 0)
    }

    @Test func reconnected_resumesAfterWhatThePeerAcknowledged_clampedToWhatWasSent() {
        var ledger = SendLedger(windowBytes: 1000)
        _ = ledger.take(count: 10, bytes: 1000)
        let r8 = ledger.reconnected(resumeAfter: 6)
        #expect(r8 == 6)
        #expect(ledger.nextSequence == 7)
        #expect(ledger.unacknowledgedBytes == 0)
        let r9 = ledger.reconnected(resumeAfter: 50)
        #expect(r9 == 6)  // never past what was sent
        let r10 = ledger.reconnected(resumeAfter: 0)
        #expect(r10 == 0)  // the peer restarted: from 1 again
        #expect(ledger.nextSequence == 1)
    }
}

@Suite struct ReceiveLedgerTests {
    @Test func receive_dropsFramesAResendRepeats() throws {
        var ledger = ReceiveLedger(limitBytes: 10_000)
        ledger.peerIncarnation(42)
        let r11 = try ledger.receive(firstSequence: 1, sizes: [10, 10, 10])
        #expect(r11 == 0)
        let r12 = try ledger.receive(firstSequence: 2, sizes: [10, 10, 10, 10])
        #expect(r12 == 2)  // 2, 3 again; 4, 5 new
        #expect(ledger.highestReceived == 5)
        let r13 = try ledger.receive(firstSequence: 1, sizes: [10])
        #expect(r13 == 1)
    }

    @Test func receive_whenFramesAreSkipped_throwsGap() {
        var ledger = ReceiveLedger(limitBytes: 10_000)
        #expect(throws: ReceiveLedger.Violation.gap(expected: 1, got: 3)) {
            try ledger.receive(firstSequence: 3, sizes: [1])
        }
        #expect(throws: ReceiveLedger.Violation.zeroSequence) { try ledger.receive(firstSequence: 0, sizes: [1]) }
    }

    @Test func receive_whenThePeerOverrunsTheWindow_throwsOverrun() throws {
        var ledger = ReceiveLedger(limitBytes: 100)
        _ = try ledger.receive(firstSequence: 1, sizes: [60])
        #expect(throws: ReceiveLedger.Violation.overrun(bytes: 120, limit: 100)) {
            try ledger.receive(firstSequence: 2, sizes: [60])
        }
        let r14 = ledger.acknowledge(upTo: 1)
        #expect(r14 == 1)
        let r15 = try ledger.receive(firstSequence: 2, sizes: [60])
        #expect(r15 == 0)
    }

    @Test func acknowledge_isClampedToWhatArrived_andSaysOnlyNews() throws {
        var ledger = ReceiveLedger(limitBytes: 100)
        _ = try ledger.receive(firstSequence: 1, sizes: [1, 1, 1])
        let r16 = ledger.acknowledge(upTo: 10)
        #expect(r16 == 3)
        let r17 = ledger.acknowledge(upTo: 2)
        #expect(r17 == nil)
        #expect(ledger.unacknowledgedBytes == 0)
    }

    @Test func peerIncarnation_whenThePeerRestarted_forgetsItsNumbers() throws {
        var ledger = ReceiveLedger(limitBytes: 100)
        ledger.peerIncarnation(1)
        _ = try ledger.receive(firstSequence: 1, sizes: [1, 1])
        _ = ledger.acknowledge(upTo: 2)
        ledger.peerIncarnation(1)
        #expect(ledger.acknowledgedUpTo == 2)
        ledger.peerIncarnation(2)
        #expect(ledger.acknowledgedUpTo == 0 && ledger.highestReceived == 0 && ledger.incarnation == 2)
        let r18 = try ledger.receive(firstSequence: 1, sizes: [1])
        #expect(r18 == 0)
    }
}

@Suite struct LinkOutboxTests {
    func frames(_ range: Range<Int>) -> [LinkFrame] {
        range.map { LinkFrame(target: "t", bytes: [1, UInt8($0)]) }
    }

    @Test func outbox_holdsFramesUntilAcknowledged_andResendsAfterAReconnect() {
        var outbox = LinkOutbox()
        outbox.append(contentsOf: frames(0..<10))
        outbox.connected(resumeAfter: 0)
        outbox.sent(LinkSendResult(accepted: 4, firstSequence: 1))  // 1...4 = frames 0...3
        #expect(outbox.unsent.count == 6)
        outbox.acknowledged(upTo: 2)
        #expect(outbox.count == 8 && outbox.firstSequence == 3)
        outbox.sent(LinkSendResult(accepted: 6, firstSequence: 5))  // 5...10 = frames 4...9
        // The link broke; the peer had acknowledged up to 6 (its Ack was lost with the connection).
        outbox.connected(resumeAfter: 6)
        #expect(outbox.count == 4 && outbox.firstSequence == 7 && outbox.sentCount == 0)
        #expect(outbox.unsent.map { $0.bytes[1] } == [6, 7, 8, 9])
        // The peer restarted and forgot everything: all that is held goes again, numbered from 1.
        outbox.sent(LinkSendResult(accepted: 2, firstSequence: 7))
        outbox.connected(resumeAfter: 0)
        #expect(outbox.count == 4 && outbox.firstSequence == 1)
        outbox.sent(LinkSendResult(accepted: 4, firstSequence: 1))
        outbox.acknowledged(upTo: 4)
        #expect(outbox.isEmpty)
    }
}

@Suite struct BackoffTests {
    @Test func nextDelay_doublesFrom100msTo5s_withoutJitterWhenRandomIsZero() {
        var backoff = Backoff()
        var delays: [Duration] = []
        for _ in 0..<9 { delays.append(backoff.nextDelay(random: 0)) }
        #expect(delays == [100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000].map { Duration.milliseconds($0) })
        backoff.reset()
        let r19 = backoff.nextDelay(random: 0)
        #expect(r19 == .milliseconds(100))
    }

    @Test func nextDelay_takesAtMostTheJitterFractionAway() {
        var backoff = Backoff(initial: .seconds(1), maximum: .seconds(1), jitter: 0.2)
        let r20 = backoff.nextDelay(random: 0.999_999)
        #expect(r20 > .milliseconds(799))
        let r21 = backoff.nextDelay(random: 0.5)
        #expect(abs((r21 - .milliseconds(900)) / .microseconds(1)) < 1)
    }
}

@Suite struct LinkNamesTests {
    @Test func dials_theNameThatSortsFirst() {
        #expect(LinkNames.dials("edge-a", "edge-b"))
        #expect(!LinkNames.dials("edge-b", "edge-a"))
    }

    @Test func check_acceptsANodeName_refusesOthers() throws {
        let nodes: Set = ["edge-a", "edge-b", "edge-c"]
        #expect(
            try LinkNames.check(certificateNames: ["edge-b", "www"], knownNodes: nodes, expected: nil) == ["edge-b"])
        #expect(throws: LinkNames.Refusal.notANode(names: ["mallory"])) {
            try LinkNames.check(certificateNames: ["mallory"], knownNodes: nodes, expected: nil)
        }
        #expect(throws: LinkNames.Refusal.noNames) {
            try LinkNames.check(certificateNames: [], knownNodes: nodes, expected: nil)
        }
    }

    @Test func check_forADialedPeer_wantsExactlyThatNode() throws {
        let nodes: Set = ["edge-a", "edge-b", "edge-c"]
        #expect(try LinkNames.check(certificateNames: ["edge-b"], knownNodes: nodes, expected: "edge-b") == ["edge-b"])
        #expect(throws: LinkNames.Refusal.notTheDialedNode(expected: "edge-b", names: ["edge-c"])) {
            try LinkNames.check(certificateNames: ["edge-c"], knownNodes: nodes, expected: "edge-b")
        }
    }

    @Test func subjectCommonNames_readsTheSubjectNotTheIssuer() throws {
        let pki = try TestPKI()
        let cert = try pki.issue(commonName: "edge-b", dnsNames: [])
        let der = try pki.der(cert)
        #expect(LinkNames.subjectCommonNames(der: der) == ["edge-b"])
        #expect(LinkNames.subjectCommonNames(der: [0x30, 0x03, 0x01]) == nil)
        #expect(LinkNames.subjectCommonNames(der: []) == nil)
    }

    @Test func addresses_parse() {
        #expect(LinkAddress("10.250.0.1:7400") == LinkAddress(host: "10.250.0.1", port: 7400))
        #expect(LinkAddress("[::1]:7400") == LinkAddress(host: "::1", port: 7400))
        #expect(LinkAddress("[::1]:7400")?.description == "[::1]:7400")
        #expect(LinkAddress("nohost") == nil)
        #expect(LinkAddress(":7400") == nil)
        #expect(LinkAddress("h:99999") == nil)
    }
}
