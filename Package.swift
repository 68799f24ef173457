// swift-tools-version:6.0
import PackageDescription

/// Settings shared by every Swift target. Release builds drop bounds checks in the numeric hot loops
/// only where the code says so (`UnsafeMutablePointer`), never globally.
let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

/// The C kernels are optimized in debug builds too: `swift test` then checks the code that ships (the kernels
/// reassociate sums under a pragma, which -O0 ignores), and the Whisper tests' transcriptions do not run the
/// unoptimized row kernels.
let kernelSettings: [CSetting] = [
    .unsafeFlags(["-O2"], .when(configuration: .debug)),
]

let package = Package(
    name: "acm-serve",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "acm-serve", targets: ["acm-serve"]),
        .executable(name: "acm-bench", targets: ["acm-bench"]),
        .library(name: "ACMCore", targets: ["ACMCore"]),
        .library(name: "ACMModels", targets: ["ACMModels"]),
        .library(name: "ACMWhisper", targets: ["ACMWhisper"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // C libraries from Debian, through pkg-config.
        .systemLibrary(
            name: "CBLAS", pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(
            name: "CXSMM", pkgConfig: "libxsmm",
            providers: [.apt(["libxsmm-dev"])]),
        .systemLibrary(
            name: "CMicroHTTPD", pkgConfig: "libmicrohttpd",
            providers: [.apt(["libmicrohttpd-dev"])]),
        .systemLibrary(
            name: "CJansson", pkgConfig: "jansson",
            providers: [.apt(["libjansson-dev"])]),
        .systemLibrary(
            name: "CPNG", pkgConfig: "libpng",
            providers: [.apt(["libpng-dev"])]),
        .systemLibrary(
            name: "CTurboJPEG", pkgConfig: "libturbojpeg",
            providers: [.apt(["libturbojpeg0-dev"])]),
        .systemLibrary(
            name: "CSndFile", pkgConfig: "sndfile",
            providers: [.apt(["libsndfile1-dev"])]),
        .systemLibrary(
            name: "CSoxr", pkgConfig: "soxr",
            providers: [.apt(["libsoxr-dev"])]),
        .systemLibrary(
            name: "CZlib", pkgConfig: "zlib",
            providers: [.apt(["zlib1g-dev"])]),

        // Row kernels (softmax, LayerNorm, GELU) compiled per instruction set and picked at run time.
        .target(name: "CACMKernels", cSettings: kernelSettings),
        // The bf16 GEMM: LIBXSMM's JIT kernels on AVX-512 BF16 or AMX, the activations rounded as they are read.
        .target(name: "CACMBF16", dependencies: ["CXSMM", "CACMKernels"], cSettings: kernelSettings),
        // Numeric core: tensors, GEMM (LIBXSMM, OpenBLAS), kernels, attention, the ACM layer and the dense-or-ACM
        // layer both models build on, safetensors and .npy readers.
        .target(name: "ACMCore", dependencies: ["CBLAS", "CXSMM", "CACMKernels", "CACMBF16"], swiftSettings: swiftSettings),
        // Models built from the core: the ViT and its config.
        .target(name: "ACMModels", dependencies: ["ACMCore"], swiftSettings: swiftSettings),
        // Whisper speech recognition on the core: audio decoding (libsndfile, libsoxr), the log-mel
        // front end, the encoder-decoder with ACM-capable MLPs, greedy decoding with Whisper's temperature fallback
        // (zlib for the compression ratio) and the BPE detokenizer.
        .target(
            name: "ACMWhisper", dependencies: ["ACMCore", "CACMKernels", "CSndFile", "CSoxr", "CZlib"],
            swiftSettings: swiftSettings),
        // Serving without HTTP: the dynamic batcher and the model's loop thread, image decoding and
        // preprocessing, metrics, server configuration.
        .target(
            name: "ACMServing",
            dependencies: [
                "ACMModels", "ACMWhisper", "CPNG", "CTurboJPEG",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings),
        // HTTP front end (libmicrohttpd + jansson): the Open Inference Protocol.
        .target(
            name: "ACMHTTP",
            dependencies: [
                "CMicroHTTPD", "CJansson", "ACMServing", "ACMWhisper",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),

        .executableTarget(
            name: "acm-serve",
            dependencies: [
                "ACMModels", "ACMServing", "ACMHTTP", "ACMWhisper",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),
        .executableTarget(
            name: "acm-bench",
            dependencies: [
                "ACMCore", "ACMModels", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: swiftSettings),

        .testTarget(name: "ACMCoreTests", dependencies: ["ACMCore"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ACMModelsTests", dependencies: ["ACMModels"],
            exclude: ["Fixtures"], swiftSettings: swiftSettings),
        .testTarget(
            name: "ACMServingTests", dependencies: ["ACMServing"], exclude: ["Fixtures"],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "ACMHTTPTests",
            dependencies: ["ACMHTTP", "ACMServing", "ACMCore", .product(name: "Logging", package: "swift-log")],
            swiftSettings: swiftSettings),
        .testTarget(
            name: "ACMWhisperTests", dependencies: ["ACMWhisper"],
            exclude: ["Fixtures"], swiftSettings: swiftSettings),
    ]
)
