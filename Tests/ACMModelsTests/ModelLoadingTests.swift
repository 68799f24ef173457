import ACMCore
import Foundation
import Testing

@testable import ACMModels

/// A copy of a fixture model in a temporary directory, to break on purpose.
final class BrokenModel {
    let path: String

    init(from fixture: String) throws {
        path = NSTemporaryDirectory() + "acm-model-" + UUID().uuidString
        try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
        for file in ["config.json", "model.safetensors"] {
            try FileManager.default.copyItem(atPath: "\(fixtures)/\(fixture)/\(file)", toPath: "\(path)/\(file)")
        }
    }

    deinit { try? FileManager.default.removeItem(atPath: path) }

    var config: String {
        get { try! String(contentsOfFile: "\(path)/config.json", encoding: .utf8) }
        set { try! newValue.write(toFile: "\(path)/config.json", atomically: true, encoding: .utf8) }
    }

    /// Rewrites the weights after `edit` changes the name → tensor map.
    func editTensors(_ edit: (inout [String: Tensor]) -> Void) throws {
        let file = try SafeTensorsFile(path: "\(path)/model.safetensors")
        var tensors: [String: Tensor] = [:]
        for name in file.entries.keys { tensors[name] = try file.tensor(name) }
        edit(&tensors)
        try SafeTensorsFile.write(tensors, to: "\(path)/model.safetensors")
    }

    /// The load error's message; records an issue if the model loads.
    func loadError() -> String {
        do {
            _ = try Model(directory: path)
            Issue.record("a broken model loaded")
            return ""
        } catch {
            return "\(error)"
        }
    }
}

@Suite struct ModelLoadingTests {
    /// Should load every fixture, with its ACMs in execution order.
    @Test func loadsFixtures() throws {
        let mixed = try Model(directory: "\(fixtures)/vit_mixed")
        #expect(mixed.vit.acmPaths.first == "encoder.layers.encoder_layer_0.self_attention.q_proj")
        #expect(mixed.vit.acmPaths.last == "encoder.layers.encoder_layer_1.mlp")
        #expect(try Model(directory: "\(fixtures)/vit_dense").vit.acmPaths.isEmpty)
    }

    /// Should name a missing tensor.
    @Test func missingTensor() throws {
        let m = try BrokenModel(from: "vit_mixed")
        try m.editTensors { $0["encoder.ln.weight"] = nil }
        #expect(m.loadError().contains("missing tensor 'encoder.ln.weight'"))
    }

    /// Should name a tensor that no layer uses.
    @Test func unusedTensor() throws {
        let m = try BrokenModel(from: "vit_mixed")
        try m.editTensors { $0["encoder.layers.encoder_layer_9.mlp.w1"] = Tensor(shape: [2]) }
        #expect(m.loadError().contains("'encoder.layers.encoder_layer_9.mlp.w1'"))
    }

    /// Should name a tensor with the wrong shape, and both shapes.
    @Test func wrongShape() throws {
        let m = try BrokenModel(from: "vit_mixed")
        try m.editTensors { $0["encoder.layers.encoder_layer_1.mlp.w2"] = Tensor(shape: [192, 47]) }
        #expect(m.loadError().contains("tensor 'encoder.layers.encoder_layer_1.mlp.w2' has shape [192, 47], expected [192, 48]"))
    }

    /// Should say that a truncated weights file is truncated.
    @Test func truncatedWeights() throws {
        let m = try BrokenModel(from: "vit_bias")
        let data = try Data(contentsOf: URL(fileURLWithPath: "\(m.path)/model.safetensors"))
        try data.prefix(data.count - 100).write(to: URL(fileURLWithPath: "\(m.path)/model.safetensors"))
        #expect(m.loadError().contains("truncated"))
    }

    /// Should reject bad JSON, missing fields, wrong types and unknown ACM paths with what is wrong.
    @Test func badConfigs() throws {
        let cases: [((String) -> String, String)] = [
            ({ _ in "{ not json" }, "not valid JSON"),
            ({ $0.replacingOccurrences(of: "\"hidden_dim\": 48,", with: "") }, "missing field 'vit.hidden_dim'"),
            ({ $0.replacingOccurrences(of: "\"num_heads\": 3", with: "\"num_heads\": \"three\"") }, "'vit.num_heads' has the wrong type"),
            ({ $0.replacingOccurrences(of: "\"num_heads\": 3", with: "\"num_heads\": 5") }, "not a multiple of num_heads"),
            ({ $0.replacingOccurrences(of: "\"format_version\": 1", with: "\"format_version\": 7") }, "format_version 7"),
            ({ $0.replacingOccurrences(of: "encoder_layer_1.mlp\"", with: "encoder_layer_7.mlp\"") }, "'encoder.layers.encoder_layer_7.mlp' is not a module"),
            ({ $0.replacingOccurrences(of: "\"activation\": \"gelu\"", with: "\"activation\": \"swish\"") }, "activation' is invalid"),
            // Sizes whose products overflow (the config fuzz target, docs/reliability.md): the
            // ACM's trapped in its weight shape [d, n·h], the ViT's in its sequence length.
            ({ $0.replacingOccurrences(of: "\"num_learners\": 4", with: "\"num_learners\": 9223372036854775807") },
             "num_learners and learner_dim must be in 1...16777216"),
            ({ $0.replacingOccurrences(of: "\"image_size\": 16", with: "\"image_size\": 4611686018427387904") },
             "vit sizes must be in 1...16777216"),
        ]
        for (edit, message) in cases {
            let m = try BrokenModel(from: "vit_mixed")
            m.config = edit(m.config)
            let error = m.loadError()
            #expect(error.contains(message), "expected “\(message)” in “\(error)”")
        }
        #expect("\((try? Model(directory: "/nonexistent")) == nil)" == "true")
    }
}
