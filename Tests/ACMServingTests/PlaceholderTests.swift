import Testing
@testable import ACMServing
