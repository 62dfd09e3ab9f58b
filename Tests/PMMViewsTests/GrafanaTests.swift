import Foundation
import Testing

/// deploy/grafana/pmm.json queries only metrics the router exports (Sources/PMMRouter/Router+Metrics.swift).
@Suite struct GrafanaTests {
    /// The metric names the router registers: the string literals `"pmm_…"` in Router+Metrics.swift.
    static func exportedMetrics() throws -> Set<String> {
        let source = try repositoryFile("Sources/PMMRouter/Router+Metrics.swift")
        let literal = /"(pmm_[a-z0-9_]+)"/
        return Set(source.matches(of: literal).map { String($0.output.1) })
    }

    /// Every PromQL expression in the dashboard's panels.
    static func expressions() throws -> [String] {
        let data = try #require(try repositoryFile("deploy/grafana/pmm.json").data(using: .utf8))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        return panels.flatMap { panel in
            ((panel["targets"] as? [[String: Any]]) ?? []).compactMap { $0["expr"] as? String }
        }
    }

    @Test func dashboard_queriesOnlyMetricsTheRouterExports() throws {
        let exported = try Self.exportedMetrics()
        #expect(exported.count >= 10, "found \(exported.sorted()) in Router+Metrics.swift")
        let expressions = try Self.expressions()
        #expect(!expressions.isEmpty)
        for expression in expressions {
            let names = expression.matches(of: /pmm_[a-z0-9_]+/).map { String($0.output) }
            #expect(!names.isEmpty, "no pmm metric in \(expression)")
            for name in names {
                #expect(exported.contains(name), "\(name) (in \(expression)) is not a metric of Router+Metrics.swift")
            }
        }
    }

    @Test func dashboard_coversRatesQueuesStallsDeadLettersAndSpool() throws {
        let used = Set(try Self.expressions().flatMap { $0.matches(of: /pmm_[a-z0-9_]+/).map { String($0.output) } })
        for name in [
            "pmm_ingress_frames_total", "pmm_egress_frames_total", "pmm_egress_queued_frames", "pmm_egress_stalls_total",
            "pmm_dead_letters_total", "pmm_router_spooled_bytes", "pmm_egress_healthy",
        ] {
            #expect(used.contains(name), "no panel shows \(name)")
        }
    }

    @Test func dashboard_isGrafanaShaped() throws {
        let data = try #require(try repositoryFile("deploy/grafana/pmm.json").data(using: .utf8))
        let dashboard = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(dashboard["title"] as? String == "pmm")
        #expect(dashboard["uid"] as? String == "pmm")
        let panels = try #require(dashboard["panels"] as? [[String: Any]])
        var ids = Set<Int>()
        for panel in panels {
            #expect(panel["title"] is String)
            #expect(panel["gridPos"] is [String: Any])
            if let id = panel["id"] as? Int { #expect(ids.insert(id).inserted, "panel id \(id) repeats") }
        }
    }
}
