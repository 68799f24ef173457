import Testing

@testable import ACMServing

@Suite struct MetricsTests {
    /// The value of one series in the exposition text, or nil when it is absent.
    private func sample(_ metrics: ServingMetrics, _ series: String) -> Double? {
        String(decoding: metrics.render(), as: UTF8.self).split(separator: "\n")
            .first { $0.hasPrefix(series + " ") }.flatMap { Double($0.split(separator: " ").last!) }
    }

    /// Should register a speech model's ACM layers at zero and count the tokens each k ran, as for an
    /// image model; a dense speech model has no layer series.
    @Test func speechLayerTokens() {
        let metrics = ServingMetrics()
        metrics.register(model: "s", kind: .speech, acmPaths: ["enc.0"], choices: [0...2])
        metrics.register(model: "dense", kind: .speech, acmPaths: [], choices: [])
        let series = { (k: Int) in #"acm_layer_tokens_total{model="s",layer="enc.0",k="\#(k)"}"# }
        #expect((0...2).map { sample(metrics, series($0)) } == [0, 0, 0])
        metrics.batch(model: "s", kind: .speech, items: 2, seconds: 0.1, acmPaths: ["enc.0"], histogram: [[5, 0, 7]])
        metrics.batch(model: "s", kind: .speech, items: 1, seconds: 0.1, acmPaths: ["enc.0"], histogram: [[1, 2, 0]])
        #expect((0...2).map { sample(metrics, series($0)) } == [6, 2, 7])
        #expect(sample(metrics, #"acm_inference_total{model="s"}"#) == 3)
        #expect(sample(metrics, #"acm_batch_size_utterances_count{model="s"}"#) == 2)
        #expect(sample(metrics, #"acm_batch_size_images_count{model="s"}"#) == nil)
        #expect(!String(decoding: metrics.render(), as: UTF8.self).contains(#"acm_layer_tokens_total{model="dense""#))
    }
}
