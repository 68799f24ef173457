#include <jansson.h>

// jansson's dump flags are function-like macros, which Swift cannot import: this is the one set the
// server writes with, compact output with 9 significant digits for reals (enough to print any Float
// exactly, so a client reads back the logits the model computed).
static inline size_t acm_json_dump_flags(void) { return JSON_COMPACT | JSON_REAL_PRECISION(9); }
