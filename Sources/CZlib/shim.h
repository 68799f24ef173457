// zlib: Whisper's compression ratio of a transcript (how repetitive it is), as openai-whisper computes it.
#include <zlib.h>
