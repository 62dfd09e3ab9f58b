import Foundation
@testable import PMMRouter
import Testing

/// The router writes its status with a hand-made JSON writer (Foundation's encoder cost most of an idle
/// router's CPU in a mesh of thousands of pipes); readers decode it with `JSONDecoder`. The two must agree on
/// every field: a field added to `RouterStatus` and not to `StatusJSON` fails here.
@Suite struct StatusJSONTests {
    static func sample(links: Bool, optionals: Bool) -> RouterStatus {
        let when = Date(timeIntervalSince1970: 1_796_000_000)
        return RouterStatus(
            pid: 4242, revision: 7, node: optionals ? "node-a" : nil, root: "/srv/pipes \"quoted\" \\ back", startedAt: when,
            updatedAt: when.addingTimeInterval(61), stopping: true,
            ingress: [
                RouterStatus.Ingress(
                    name: "api.orders.s0.in", producer: "api", dataType: "orders", open: true, frames: 12, bytes: 3456, resets: 1,
                    misaddressed: 2, replayed: 3, spooledBytes: 99, rate: 1234.5, lastError: optionals ? "bad\nline\t\u{1}é" : nil),
                RouterStatus.Ingress(
                    name: "api.orders.s1.in", producer: "api", dataType: "orders", open: false, frames: .max, bytes: 0, resets: 0,
                    misaddressed: 0, replayed: 0, spooledBytes: -1, rate: 0, lastError: nil),
            ],
            egress: [
                RouterStatus.Egress(
                    name: "billing-0.orders.out", instance: "billing-0", dataType: "orders", healthy: false, stalled: true,
                    since: when.addingTimeInterval(3599), frames: 5, bytes: 6, queued: 7, inPipe: 8, dropped: 9, deadLettered: 10,
                    failures: 11, stalls: 12, rerouted: 13, rate: 0.125, lastError: optionals ? "stalled: read nothing for 5.0s" : nil)
            ],
            waiting: optionals ? ["orders": 3, "metrics": 1] : [:], deadLetters: optionals ? ["no-route": 2, "overflow": 5] : [:],
            dropped: 14, reloads: 15, failedReloads: 16, lastReloadError: optionals ? "mesh.yaml:1:1: error" : nil,
            heldBytes: optionals ? 1 << 40 : nil, spooledBytes: optionals ? 77 : nil,
            links: links
                ? [
                    RouterStatus.Link(
                        peer: "node-b", up: true, since: when, peerRevision: 6, sentFrames: 100, acknowledgedFrames: 90, receivedFrames: 80,
                        unacknowledged: 10, rerouted: 1, rate: 2e-5, lastError: optionals ? "connection reset" : nil)
                ] : nil,
            workers: optionals ? 2 : nil)
    }

    @Test(arguments: [(false, false), (true, true), (true, false), (false, true)])
    func whatTheRouterWrites_decodesToWhatItHolds(links: Bool, optionals: Bool) throws {
        let status = Self.sample(links: links, optionals: optionals)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        let decoded = try decoder.decode(RouterStatus.self, from: Data(StatusJSON.encode(status)))
        #expect(decoded == status)
    }

    @Test func aStatusWithNoPipes_isValidJSON() throws {
        var status = Self.sample(links: false, optionals: false)
        status.ingress = []
        status.egress = []
        let object = try JSONSerialization.jsonObject(with: Data(StatusJSON.encode(status))) as? [String: Any]
        #expect((object?["ingress"] as? [Any])?.isEmpty == true)
        #expect(object?["node"] == nil, "nil optionals are left out, as JSONEncoder does")
    }

    /// What `router.json` says for a router of several workers: worker 0 merges what each published.
    @Test func workersStatuses_mergeIntoOne_withTheRevisionEveryWorkerServes() {
        var first = Self.sample(links: true, optionals: true)
        var second = Self.sample(links: false, optionals: true)
        first.revision = 8
        second.revision = 7  // still installing the reload
        second.ingress = [RouterStatus.Ingress(
            name: "web.clicks.s0.in", producer: "web", dataType: "clicks", open: true, frames: 1, bytes: 2, resets: 0, misaddressed: 0,
            replayed: 0, spooledBytes: 0, rate: 0, lastError: nil)]
        second.egress = []
        second.updatedAt = first.updatedAt.addingTimeInterval(-2)
        second.stopping = false
        second.waiting = ["orders": 2, "clicks": 1]
        second.dropped = 1
        second.reloads = 14
        second.failedReloads = 16
        second.heldBytes = 10
        second.spooledBytes = 3
        let merged = RouterStatus.merged([first, second])
        #expect(merged.workers == 2)
        #expect(merged.revision == 7, "apply --wait must wait for the slowest worker")
        #expect(merged.updatedAt == second.updatedAt)
        #expect(merged.stopping)
        #expect(merged.ingress.map(\.name) == first.ingress.map(\.name) + ["web.clicks.s0.in"])
        #expect(merged.egress == first.egress)
        #expect(merged.waiting == ["orders": 5, "metrics": 1, "clicks": 1])
        #expect(merged.deadLetters == ["no-route": 4, "overflow": 10])
        #expect(merged.dropped == 15)
        #expect(merged.reloads == 15, "each worker counts every reload: the most, not the sum")
        #expect(merged.heldBytes == (1 << 40) + 10)
        #expect(merged.spooledBytes == 80)
        #expect(merged.links == first.links)
    }
}
