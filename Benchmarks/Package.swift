// swift-tools-version:6.1
// The benchmarks are a package of their own, so `make test` of the main
// package never builds them. They link the main package's FanoutClient and
// drive a real, release-built `fanoutd` child process. Run with `make bench`.
import PackageDescription

let package = Package(
    name: "FanoutBenchmarks",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Fanout", path: ".."),
    ],
    targets: [
        .executableTarget(
            name: "FanoutBench",
            dependencies: [.product(name: "FanoutClient", package: "Fanout")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
