import Foundation
import PMMRouter
import PMMViews
import Testing

/// `pmm top`'s frame against golden text, from a router.json fixture.
@Suite struct TopTests {
    static func fixture(links: String? = nil) throws -> (RouterStatus, Data) {
        var text = try repositoryFile("Tests/PMMViewsTests/Snapshots/router.json")
        if let links { text = text.replacingOccurrences(of: "\"pid\" : 4242,", with: "\"links\" : \(links),\n  \"pid\" : 4242,") }
        let data = Data(text.utf8)
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .iso8601
        return (try decoder.decode(RouterStatus.self, from: data), data)
    }

    static let now = ISO8601DateFormatter().date(from: "2026-12-01T10:05:01Z")!

    @Test func render_whenRouterRuns_showsInstancesProducersAndTotals() throws {
        let (status, data) = try Self.fixture()
        #expect(TopLink.decode(statusJSON: data) == nil, "no links section without links")
        let input = TopView.Input(status: status, routerRunning: true, mesh: "shop", appliedRevision: 3, stateDirectory: "/var/lib/pmm", now: Self.now)
        try assertSnapshot(TopView.render(input, color: false).joined(separator: "\n") + "\n", named: "top.txt")
    }

    @Test func render_whenStatusHasLinks_addsALinksSection() throws {
        let links = """
            [{"peer": "edge-b", "up": true, "since": "2026-12-01T10:00:00Z", "rate": 1520.5, "unacknowledged": 12, "peerRevision": 3,
              "sentFrames": 9000, "acknowledgedFrames": 8988, "receivedFrames": 0, "rerouted": 0},
             {"peer": "edge-c", "up": false, "since": "2026-12-01T10:04:50Z", "rate": 0, "unacknowledged": 0, "peerRevision": 2,
              "sentFrames": 40, "acknowledgedFrames": 40, "receivedFrames": 0, "rerouted": 3}]
            """
        let (status, data) = try Self.fixture(links: links)
        let decoded = try #require(TopLink.decode(statusJSON: data))
        #expect(decoded.map(\.peer) == ["edge-b", "edge-c"])
        let input = TopView.Input(
            status: status, routerRunning: true, mesh: "shop", appliedRevision: 3, links: decoded, stateDirectory: "/var/lib/pmm", now: Self.now)
        try assertSnapshot(TopView.render(input, color: false).joined(separator: "\n") + "\n", named: "top-links.txt")
    }

    @Test func render_whenStatusIsOldAndRouterGone_saysSo() throws {
        let (status, _) = try Self.fixture()
        let input = TopView.Input(
            status: status, routerRunning: false, mesh: "shop", appliedRevision: 4, stateDirectory: "/var/lib/pmm",
            now: Self.now.addingTimeInterval(90))
        try assertSnapshot(TopView.render(input, color: false).joined(separator: "\n") + "\n", named: "top-stale.txt")
    }

    @Test func render_whenNoStatus_pointsAtTheRouter() {
        let input = TopView.Input(status: nil, routerRunning: false, stateDirectory: "/var/lib/pmm", now: Self.now)
        #expect(
            TopView.render(input, color: false) == [
                "pmm top  10:05:01 UTC", "", "No router status in /var/lib/pmm (start one: pmm router, or pmm up -f mesh.yaml)",
            ])
    }

    @Test func render_colourOnlyWhenAsked() throws {
        let (status, _) = try Self.fixture()
        let input = TopView.Input(status: status, routerRunning: true, stateDirectory: "/var/lib/pmm", now: Self.now)
        let plain = TopView.render(input, color: false).joined(separator: "\n")
        let coloured = TopView.render(input, color: true).joined(separator: "\n")
        #expect(!plain.contains("\u{1B}"))
        #expect(coloured.contains("\u{1B}[31mdown\u{1B}[0m"))
        // Colour never shifts a column: stripped of escapes, the coloured frame is the plain one.
        #expect(coloured.replacing(/\x{1B}\[[0-9;]*m/, with: "") == plain)
    }

    @Test func graphLive_fromStatus_takesTheWorstHealthAndSumsRates() throws {
        let (status, _) = try Self.fixture()
        let live = GraphLive(status: status)
        #expect(live.instances == ["collector-0": .healthy, "collector-1": .down, "canary-0": .stalled])
        #expect(live.ingress["api.metrics"] == 812.4)
        #expect(live.waiting == ["orders": 4])
    }
}
