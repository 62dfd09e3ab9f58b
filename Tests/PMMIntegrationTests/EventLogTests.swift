import Foundation
import PMMCore
import PMMRegistry
import Testing

/// The event log keeps the newest events only.
@Suite struct EventLogTests {
    @Test func eventLog_keepsTheNewestTenThousand() throws {
        let dir = TemporaryDirectory("pmm-events")
        let registry = try Registry(path: dir.path + "/registry.sqlite")
        for i in 0..<10_050 {
            try registry.event(kind: "test", message: "event \(i)", at: "2026-12-01T00:00:00Z")
        }
        let events = try registry.events(limit: 20_000)
        #expect(events.count == 10_000, "bounded: \(events.count)")
        #expect(events.first?.message == "event 50" && events.last?.message == "event 10049", "the oldest went first")
    }

    @Test func eventLog_boundApplies_toRevisionsAndRoutingRulesToo() throws {
        let dir = TemporaryDirectory("pmm-events")
        let registry = try Registry(path: dir.path + "/registry.sqlite", maximumEvents: 5)
        for i in 0..<20 {
            try registry.event(kind: "test", message: "event \(i)", at: "2026-12-01T00:00:00Z")
        }
        _ = try registry.append(
            Revision(appliedAt: "2026-12-01T00:00:01Z", specSHA256: "x", specText: "", specFile: "/m.yaml", root: "/r", source: "apply", summary: "s"))
        #expect(try registry.eventCount() == 5)
        #expect(try registry.events().last?.kind == "revision")
        try registry.setRoutingRule(RoutingRule(dataType: "metrics", service: "canary", weight: 3, setBy: 0, at: "2026-12-01T00:00:02Z"))
        #expect(try registry.eventCount() == 5)
        #expect(try registry.events().map(\.kind) == ["test", "test", "test", "revision", "routing-rule"])
    }
}
