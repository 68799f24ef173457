#include <stddef.h>
#include <stdint.h>

// libFuzzer's interface (compiler-rt's FuzzerInterface.h, which does not ship with the toolchain).
// Each fuzz target defines the callback in Swift, with @_cdecl.
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

// A fuzz target's main.swift calls this rather than relying on libFuzzer's own main(): SwiftPM's debug
// link points main at the executable module's entry point (<module>_main, for testing). Swift cannot pass
// the driver `&argc` and `&argv` as it wants them.
static inline int CFuzzDriver_run(int argc, char **argv) {
    return LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput);
}
