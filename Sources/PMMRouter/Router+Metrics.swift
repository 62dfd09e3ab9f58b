import PMMSystem
import Logging
import CoreMetrics
import PMMCore
import PMMRouterCore
import Prometheus

/// Counters and gauges through swift-metrics, backed by a swift-prometheus registry that renders the text
/// exposition. The router's own counters are the source of truth; they are copied into the metrics on each
/// scrape, so the hot path pays nothing for metrics.
final class RouterMetrics {
    let registry = PrometheusCollectorRegistry()
    let factory: PrometheusMetricsFactory
    private var counters: [String: (CoreMetrics.Counter, Int64)] = [:]
    private var gauges: [String: CoreMetrics.Gauge] = [:]

    init() {
        factory = PrometheusMetricsFactory(registry: registry)
    }

    /// Raises the counter `name{labels}` to `value` (counters only go up; a lower value is ignored).
    func count(_ name: String, _ labels: [(String, String)], _ value: UInt64) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        let (counter, last) = counters[key] ?? (CoreMetrics.Counter(label: name, dimensions: labels, factory: factory), 0)
        let now = Int64(clamping: value)
        if now > last { counter.increment(by: now - last) }
        counters[key] = (counter, max(now, last))
    }

    func gauge(_ name: String, _ labels: [(String, String)], _ value: Double) {
        let key = name + labels.map { "|\($0.0)=\($0.1)" }.joined()
        let gauge = gauges[key] ?? CoreMetrics.Gauge(label: name, dimensions: labels, factory: factory)
        gauges[key] = gauge
        gauge.record(value)
    }

    func render() -> String {
        var buffer: [UInt8] = []
        registry.emit(into: &buffer)
        return String(decoding: buffer, as: UTF8.self)
    }
}

extension Router {
    /// The Prometheus text of `status` (the router's counters, refreshed now; with workers, every worker's).
    func metricsText(of status: RouterStatus) -> String {
        let metrics = self.routerMetrics
        metrics.gauge("pmm_router_revision", [], Double(status.revision))
        metrics.gauge("pmm_router_held_bytes", [], Double(status.heldBytes ?? 0))
        metrics.gauge("pmm_router_spooled_bytes", [], Double(status.spooledBytes ?? 0))
        metrics.gauge("pmm_router_workers", [], Double(status.workers ?? 1))
        for pipe in status.ingress {
            let labels = [("pipe", pipe.name), ("producer", pipe.producer), ("data_type", pipe.dataType)]
            metrics.count("pmm_ingress_frames_total", labels, pipe.frames)
            metrics.count("pmm_ingress_bytes_total", labels, pipe.bytes)
            metrics.count("pmm_ingress_resets_total", labels, pipe.resets)
            metrics.count("pmm_ingress_misaddressed_total", labels, pipe.misaddressed)
            metrics.count("pmm_ingress_replayed_total", labels, pipe.replayed)
        }
        for pipe in status.egress {
            let labels = [("pipe", pipe.name), ("instance", pipe.instance), ("data_type", pipe.dataType)]
            metrics.count("pmm_egress_frames_total", labels, pipe.frames)
            metrics.count("pmm_egress_bytes_total", labels, pipe.bytes)
            metrics.count("pmm_egress_dropped_total", labels, pipe.dropped)
            metrics.count("pmm_egress_failures_total", labels, pipe.failures)
            metrics.count("pmm_egress_stalls_total", labels, pipe.stalls)
            metrics.count("pmm_egress_rerouted_total", labels, pipe.rerouted)
            metrics.gauge("pmm_egress_healthy", labels, pipe.healthy ? 1 : 0)
            metrics.gauge("pmm_egress_queued_frames", labels, Double(pipe.queued))
        }
        for (reason, count) in status.deadLetters {
            metrics.count("pmm_dead_letters_total", [("reason", reason)], count)
        }
        for link in status.links ?? [] {
            let labels = [("peer", link.peer)]
            metrics.gauge("pmm_link_up", labels, link.up ? 1 : 0)
            metrics.gauge("pmm_link_peer_revision", labels, Double(link.peerRevision))
            metrics.gauge("pmm_link_unacknowledged_frames", labels, Double(link.unacknowledged))
            metrics.count("pmm_link_sent_frames_total", labels, link.sentFrames)
            metrics.count("pmm_link_acknowledged_frames_total", labels, link.acknowledgedFrames)
            metrics.count("pmm_link_received_frames_total", labels, link.receivedFrames)
            metrics.count("pmm_link_rerouted_frames_total", labels, link.rerouted)
        }
        metrics.count("pmm_router_reloads_total", [], status.reloads)
        metrics.count("pmm_router_failed_reloads_total", [], status.failedReloads)
        metrics.count("pmm_router_spliced_bytes_total", [], status.splicedBytes ?? 0)
        metrics.count("pmm_router_spliced_from_spool_bytes_total", [], status.splicedFromSpoolBytes ?? 0)
        return metrics.render()
    }
}
