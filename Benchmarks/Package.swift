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
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        .executableTarget(
            name: "FanoutBench",
            dependencies: [
                .product(name: "FanoutClient", package: "Fanout"),
                .product(name: "PostgresTestServer", package: "Fanout"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                "CSQLiteBaseline",
            ]
        ),
        // The bare-SQLite ceiling FanoutBench compares fanoutd with: plain C on the system libsqlite3
        // (the one GRDB links on Linux), so no Swift or GRDB overhead is in the baseline.
        .target(
            name: "CSQLiteBaseline",
            linkerSettings: [.linkedLibrary("sqlite3")]
        ),
        // `make stress`: fanoutd under SIGKILLs, fuzzed frames, a following subscriber and 1,000 connections.
        .executableTarget(
            name: "FanoutStress",
            dependencies: [
                .product(name: "FanoutClient", package: "Fanout"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
