"""
The texts of the synthetic speech corpus (docs/speech-data.md): fortune cookies from Debian's `fortunes` and
`fortunes-min` packages (1:1.99.1-7.3 in Debian 12), cleaned, cut into passages of whole sentences, and split
into training and validation by a hash of each fortune, so that no validation sentence is ever spoken in
training.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.speech_text   # statistics of the pool and the split

How a fortune becomes passages:
1. The files in `fortune_files` are read (the others are code, ASCII art, IRC logs or not English); a fortune
   is the text between lines holding only `%`.
2. Its attribution (from a line starting with `--`, or ` -- Name` after a closing quote) is dropped, its
   lines joined, its whitespace collapsed.
3. A first line that ends in a colon, a heading ("Accuracy, n.:" in `definitions`), is dropped too. The
   fortune is dropped if it holds characters that do not read aloud as words (anything but letters, digits,
   spaces and . , ; : ! ? ' " - &, such as brackets, slashes, @ or *), is shouted (over a third of its
   letters in capitals), opens as a dialogue ("Q: ...", "Kirk: ..."), holds fewer than 3 words, or a word
   of over 25 characters (the 1,900-letter chemical name in `definitions`).
4. It is cut into sentences after . ! ? (and a closing quote) followed by a space and a capital letter or a
   quote; a sentence over `max_words` is cut again after , ; : and dropped if a piece is still too long.
5. Consecutive sentences are grouped into passages of at most `max_words` words. Fortunes are mostly one to
   three sentences, so passages range from a short phrase to about 20 s of speech.

Duplicates (the same words in another file or twice in one) are read once. A fortune goes to validation when
sha1 of its normalised words (lower case, letters and digits only) is below `val_fraction` of the hash range,
and holds no digit (a reference with digits can be read aloud in more than one way). Then every training
passage that shares a sentence with a validation passage is dropped, so the two sets share no sentence.
"""
import argparse
import hashlib
import os
import re
from dataclasses import dataclass

# -----------------------------------------------------------------------------
# config
fortune_dir = '/usr/share/games/fortunes'  # Debian's fortunes and fortunes-min
fortune_files = [
    'art', 'computers', 'cookie', 'definitions', 'drugs', 'education', 'ethnic', 'food', 'fortunes', 'goedel',
    'humorists', 'kids', 'law', 'linuxcookie', 'literature', 'love', 'magic', 'medicine', 'men-women',
    'miscellaneous', 'news', 'paradoxum', 'people', 'pets', 'platitudes', 'politics', 'pratchett', 'riddles',
    'science', 'songs-poems', 'sports', 'startrek', 'tao', 'wisdom', 'work', 'zippy',
]  # left out: ascii-art, debian, knghtbrd and linux (IRC logs, e-mail addresses), perl (code), translate-me
max_words = 40  # per passage: about 16 s at 150 words a minute, 20 s at the slowest rate the corpus uses
min_words = 3
max_word_chars = 25  # longer "words" are chemical names or run-together text, not speech
val_fraction = 0.06  # of the fortunes, by hash
# -----------------------------------------------------------------------------

SPOKEN = re.compile(r"^[A-Za-z0-9 .,;:!?'\"&-]+$")
SPEAKER = re.compile(r"^[A-Z][\w.' ]{0,20}:\s")  # "Q: ...", "Kirk: ...": dialogue
SENTENCE_END = re.compile(r'(?<=[.!?])["\']?\s+(?=["\']?[A-Z])')
CLAUSE_END = re.compile(r'(?<=[,;:])\s+')


@dataclass(frozen=True)
class Passage:
    text: str
    source: str  # "<file>#<n>": the fortune's file and its index there, counted from 0
    fortune_key: str  # sha1 of the fortune's normalised words: the unit of the split

    @property
    def words(self):
        return len(self.text.split())


def key(text):
    """sha1 of the lower-case letters and digits of text, words separated by one space."""
    return hashlib.sha1(' '.join(re.findall(r'[a-z0-9]+', text.lower())).encode()).hexdigest()


def read_fortunes(path):
    """A fortune file -> its fortunes, as raw text."""
    with open(path, encoding='utf-8', errors='replace') as f:
        return [t.strip('\n') for t in re.split(r'^%$', f.read(), flags=re.M) if t.strip()]


def clean(fortune):
    """A raw fortune -> its text on one line, or None when it does not read aloud well (steps 2 and 3)."""
    lines = []
    raw = fortune.splitlines()
    if raw and raw[0].rstrip().endswith(':'):
        raw = raw[1:]  # a heading: "Accuracy, n.:", "Adler's Distinction:"
    for line in raw:
        if line.lstrip().startswith('--'):
            break  # the attribution, and anything after it
        lines.append(line.strip())
    text = ' '.join(' '.join(lines).split())
    text = re.sub(r'(["\'])\s+--\s+[A-Z].*$', r'\1', text)  # an attribution after a quote, on its line
    text = text.replace('``', '"').replace("''", '"').replace('`', "'")
    letters = [c for c in text if c.isalpha()]
    words = text.split()
    if (not SPOKEN.match(text) or SPEAKER.match(text) or len(words) < min_words
            or max(map(len, words)) > max_word_chars or sum(map(str.isupper, letters)) > len(letters) / 3):
        return None
    return text


def sentences(text):
    """One line of text -> its sentences, each at most max_words words; [] when one cannot be cut to fit."""
    out = []
    for s in SENTENCE_END.split(text):
        if len(s.split()) <= max_words:
            out.append(s)
            continue
        piece = []
        for clause in CLAUSE_END.split(s):
            if len(clause.split()) > max_words:
                return []
            if len(' '.join(piece + [clause]).split()) > max_words:
                out.append(' '.join(piece))
                piece = []
            piece.append(clause)
        out.append(' '.join(piece))
    return out


def passages_of(text):
    """A cleaned fortune -> consecutive sentences grouped greedily into passages of at most max_words."""
    out, group = [], []
    for s in sentences(text):
        if group and len(' '.join(group + [s]).split()) > max_words:
            out.append(' '.join(group))
            group = []
        group.append(s)
    if group:
        out.append(' '.join(group))
    return [p for p in out if len(p.split()) >= min_words]


def is_val(fortune_key, text):
    return int(fortune_key[:8], 16) < val_fraction * 16 ** 8 and not re.search(r'\d', text)


def sentence_keys(passage_text):
    return {key(s) for s in SENTENCE_END.split(passage_text)}


def pool(directory=fortune_dir, files=None):
    """-> (train passages, val passages), each in file order. Raises if a fortune file is missing."""
    seen = set()
    train, val = [], []
    for name in files or fortune_files:
        path = os.path.join(directory, name)
        if not os.path.exists(path):
            raise FileNotFoundError(f'{path}: install Debian\'s fortunes package (scripts/setup does)')
        for i, raw in enumerate(read_fortunes(path)):
            text = clean(raw)
            if text is None:
                continue
            k = key(text)
            if k in seen:
                continue
            seen.add(k)
            for p in passages_of(text):
                (val if is_val(k, text) else train).append(Passage(p, f'{name}#{i}', k))
    # no sentence of a validation passage may be spoken in training, even from another fortune
    val_sentences = set().union(*(sentence_keys(p.text) for p in val)) if val else set()
    train = [p for p in train if not sentence_keys(p.text) & val_sentences]
    return train, val


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('--dir', default=fortune_dir, help='the fortune files (default: %(default)s)')
    args = p.parse_args(argv)
    train, val = pool(args.dir)
    for name, ps in [('train', train), ('val', val)]:
        words = sorted(q.words for q in ps)
        print(f'{name}: {len(ps)} passages from {len({q.fortune_key for q in ps})} fortunes, {sum(words)} words; '
              f'words per passage: median {words[len(words) // 2]}, 10% {words[len(words) // 10]}, '
              f'90% {words[9 * len(words) // 10]}, max {words[-1]}')


if __name__ == '__main__':
    main()
