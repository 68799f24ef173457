// swift-tools-version:6.0
import PackageDescription

// libFuzzer targets for acm-serve's parsers (docs/reliability.md, "Fuzzing"); built and run by scripts/fuzz.
//
// The modules under test are not products of the root package (ACMServing, ACMHTTP), so this package builds
// them itself from the same sources: Sources/ holds symbolic links to ../../Sources/<module>, and the targets
// below repeat the root manifest's graph for the modules the fuzzers reach. A dependency added there must be
// added here too (the build fails until it is). Fuzz targets use `@testable import`: scripts/fuzz builds in
// debug, where every module is compiled with -enable-testing; -sanitize=fuzzer,address comes from its
// command line, so that every Swift module is instrumented.

let swiftSettings: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
]

/// The fuzz target Targets/<name>, built as fuzz-<name>; its seed corpus is corpus/<name>.
func fuzzTarget(_ name: String, _ dependencies: [Target.Dependency]) -> Target {
    .executableTarget(
        name: "fuzz-\(name)", dependencies: ["CFuzzDriver"] + dependencies, path: "Targets/\(name)",
        swiftSettings: swiftSettings)
}

let package = Package(
    name: "acm-serve-fuzz",
    dependencies: [
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
    ],
    targets: [
        // The root package's modules (symbolic links), with its dependencies.
        .systemLibrary(name: "CBLAS", pkgConfig: "openblas"),
        .systemLibrary(name: "CXSMM", pkgConfig: "libxsmm"),
        .systemLibrary(name: "CMicroHTTPD", pkgConfig: "libmicrohttpd"),
        .systemLibrary(name: "CJansson", pkgConfig: "jansson"),
        .systemLibrary(name: "CPNG", pkgConfig: "libpng"),
        .systemLibrary(name: "CTurboJPEG", pkgConfig: "libturbojpeg"),
        .systemLibrary(name: "CSndFile", pkgConfig: "sndfile"),
        .systemLibrary(name: "CSoxr", pkgConfig: "soxr"),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib"),
        .target(name: "CACMKernels"),
        .target(name: "CACMBF16", dependencies: ["CXSMM", "CACMKernels"]),
        .target(name: "ACMCore", dependencies: ["CBLAS", "CXSMM", "CACMKernels", "CACMBF16"], swiftSettings: swiftSettings),
        .target(name: "ACMModels", dependencies: ["ACMCore"], swiftSettings: swiftSettings),
        .target(name: "ACMWhisper", dependencies: ["ACMCore", "CACMKernels", "CSndFile", "CSoxr", "CZlib"], swiftSettings: swiftSettings),
        .target(
            name: "ACMServing",
            dependencies: [
                "ACMModels", "ACMWhisper", "CPNG", "CTurboJPEG",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: swiftSettings),
        .target(
            name: "ACMHTTP",
            dependencies: [
                "CMicroHTTPD", "CJansson", "ACMServing", "ACMWhisper", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: swiftSettings),

        // One executable per fuzz target; each main.swift hands its callback to libFuzzer's driver.
        .target(name: "CFuzzDriver", path: "Driver"),
        fuzzTarget("infer-request", ["ACMHTTP", "ACMServing", "ACMModels", "ACMCore"]),
        fuzzTarget("bytes-elements", ["ACMHTTP"]),
        fuzzTarget("image", ["ACMServing", "ACMModels"]),
        fuzzTarget("wav", ["ACMWhisper"]),
        fuzzTarget("safetensors", ["ACMCore"]),
        fuzzTarget("config", ["ACMCore", "ACMModels", "ACMWhisper", "ACMServing"]),
    ]
)
