// swift-tools-version:6.1
// libFuzzer target over the frame decoder (`make fuzz`). A package of its
// own, built with `-sanitize=fuzzer,address`, so `make test` never builds it.
import PackageDescription

let package = Package(
    name: "FanoutFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [
        .package(name: "Fanout", path: ".."),
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .executableTarget(
            name: "FanoutFuzz",
            dependencies: [
                .product(name: "FanoutClient", package: "Fanout"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            // libFuzzer brings its own main.
            swiftSettings: [.unsafeFlags(["-parse-as-library"])]
        ),
    ],
    swiftLanguageModes: [.v6]
)
