import Foundation
import Glibc
import Logging
import PMMCore
@testable import PMMRouter
import PMMRouterCore
import PMMSpecYAML
import PMMSystem
import PMMWire
import Testing

/// The router's loop, one step at a time, in the test process: a `Router` over real FIFOs of an applied mesh,
/// driven through the steps a pass of `run` takes (readiness, `serviceAttention`, `flushAll`, `waitTimeout`), so
/// that an order of events the process meets only now and then is met every time.
@Suite(.enabled(if: isRoot, "services run as uid 0 so the test can play them all"), .serialized)
struct RouterLoopTests {
    /// An ingress pipe that waits for its consumer's queue (a look whose run could not move: `waitForQueue`)
    /// is switched off in epoll when it becomes readable meanwhile. When the same pass's `flushAll` writes that
    /// queue out, the wait is over: the next wait must not sleep, or the pipe (full, its producer blocked)
    /// stays unread until the loop's 100 ms timeout. `pmm bench --size 4000` met that several times a run
    /// (router epoll_wait timing out at 100 ms, producer and consumer asleep: 1.0–2.4 s for what takes 0.6).
    @Test func aWaitForAQueueThatEndsInTheFlush_doesNotSleepUntilTheTimeout() throws {
        let h = try MeshHarness(SpliceTests.mesh(delivery: "at-most-once", replicas: 1))
        let text = try String(contentsOfFile: h.dir.specPath, encoding: .utf8)
        let loaded = SpecLoader.loadAndValidate(yaml: text, file: "mesh.yaml")
        let spec = try #require(loaded.spec, "\(loaded.diagnostics.map(\.summary))")
        let layout = RouterLayout(spec: spec, revision: 1)
        let egressName = try #require(layout.egress.first { $0.dataType == "events" }?.name)
        let ingressName = try #require(layout.ingress.first { $0.dataType == "events" }?.name)
        // The consumer's end first, so that the router opens the pipe for writing.
        let reader = open(h.dir.root + "/" + egressName, O_RDONLY | O_NONBLOCK)
        try #require(reader >= 0)
        defer { close(reader) }
        var options = RouterOptions()
        options.splice = .never  // frames are read and queued; the wait is set below as a refused look sets it
        let router = try Router(layout: layout, options: options, logger: Logger(label: "loop-test"))
        let writer = open(h.dir.root + "/" + ingressName, O_WRONLY | O_NONBLOCK)
        try #require(writer >= 0)
        defer { close(writer) }

        func send(_ sequences: ClosedRange<UInt64>) throws {
            for sequence in sequences {
                var envelope = Envelope()
                envelope.dataType = "events"
                envelope.source = "api"
                envelope.sequence = sequence
                envelope.payload = Data(repeating: 0x61, count: 4000)
                let frame = try envelope.framed()
                #expect(write(writer, frame, frame.count) == frame.count)
            }
        }
        let slot = try #require(router.core.ingress.firstIndex { $0.name == ingressName })
        let egress = try #require(router.core.egress.firstIndex { $0.name == egressName })
        let id = router.core.ingress[slot].id

        router.housekeeping(now: monotonicNanos())  // the timers a first pass sets
        // Frames routed into the consumer's queue, not written yet; the pipe waits for that queue.
        try send(1...10)
        router.readIngress(slot, budget: 1)
        #expect(router.core.egress[egress].queue.unwrittenBytes > 0)
        router.ingressFDs[id]?.waitsFor = (egress, monotonicNanos())
        // More frames: the pipe is readable while it waits, so its readiness is switched off.
        try send(11...20)
        router.ingressReady(id)
        #expect(router.ingressFDs[id]?.armed == false)
        // The rest of the pass: the wait still holds when attention is looked at, then the flush writes the
        // queue out, then housekeeping.
        router.serviceAttention()
        router.flushAll()
        router.housekeeping(now: monotonicNanos())
        #expect(router.core.egress[egress].queue.unwrittenBytes == 0)
        // The wait is over and the pipe holds frames: the next wait returns at once, and the pass after it
        // reads the pipe again.
        #expect(router.waitTimeout(now: monotonicNanos()) == 0)
        router.serviceAttention()
        #expect(router.ingressFDs[id]?.armed == true)
    }
}
