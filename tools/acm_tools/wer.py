"""
Word error rate for English transcripts, and the text normaliser it compares them through.

    PYTHONPATH=tools .venv/bin/python -m acm_tools.wer REF.txt HYP.txt   # a transcript a line, in the same order

WER = (substitutions + deletions + insertions) / reference words, counted by a word-level Levenshtein
alignment of the normalised texts; a corpus's WER adds the edits and the reference words of all its
utterances (not a mean of per-utterance rates). An empty reference scores 0 edits against an empty
hypothesis and one insertion per hypothesis word otherwise; its rate alone is undefined (None).

`normalize` follows the steps of Whisper's English text normaliser (openai-whisper, whisper/normalizers/
english.py, `EnglishTextNormalizer`, alike in v20240930 and v20250625), written anew here for the cases our
speech corpus meets:
1. lower case; drop text in [brackets], <angle brackets> and (parentheses); drop the fillers hmm, mm, mhm,
   mmm, uh, um;
2. expand contractions (won't -> will not, can't -> can not, n't -> not, 're -> are, 's -> is, 'd -> would,
   'll -> will, 've -> have, 'm -> am, ...) and title abbreviations (mr -> mister, dr -> doctor, st -> saint, ...);
3. drop commas between digits (1,000 -> 1000) and periods not followed by a digit; replace every other
   punctuation mark and symbol with a space, except . % $ ¢ € £ (kept for numbers); strip diacritics;
4. numbers as digits (`numbers_to_digits`): spelled-out cardinals, years read in pairs, digit strings read
   digit by digit, ordinals, plurals, decimals with "point", "percent" and "per cent", currency words after a
   number: "twenty-five" -> 25, "nineteen eighty-four" -> 1984, "one oh one" -> 101, "twenty first" -> 21st,
   "the sixties" -> the 60s, "three point five" -> 3.5, "ten percent" -> 10%, "five dollars" -> $5; a lone
   one stays the word "one" ("1" becomes "one" too);
5. British spellings to American for a short list of common words (`SPELLINGS`; Whisper's own list has about
   1,700 entries, from tysto.com; ours is a subset written out here);
6. currency symbols and % attached to their number, left-over symbols dropped, whitespace collapsed.

Known differences from Whisper's: the spelling list is a subset; "and a half" / "half a million" are not
rewritten; "oh" and "o" count as zero only next to another number word or digit (Whisper's turns every "oh"
into 0, on both sides alike); "double"/"triple" digits are not expanded; "ninth" is an ordinal (Whisper's
spells it "nineth"). On the corpus's 14,318 passages the two give the same words for 96.9% of passages and
differ in 0.18% of words (docs/speech-data.md).
"""
import argparse
import re
import unicodedata
from dataclasses import dataclass
from fractions import Fraction

# -----------------------------------------------------------------------------
# normaliser tables

FILLERS = r'\b(hmm|mm|mhm|mmm|uh|um)\b'

# Applied in order: the whole words first, then the general suffixes.
CONTRACTIONS = [
    (r"\bwon't\b", 'will not'), (r"\bcan't\b", 'can not'), (r"\blet's\b", 'let us'), (r"\bain't\b", 'aint'),
    (r"\by'all\b", 'you all'), (r'\bwanna\b', 'want to'), (r'\bgotta\b', 'got to'), (r'\bgonna\b', 'going to'),
    (r"\bi'ma\b", 'i am going to'), (r'\bimma\b', 'i am going to'), (r'\bwoulda\b', 'would have'),
    (r'\bcoulda\b', 'could have'), (r'\bshoulda\b', 'should have'), (r"\bma'am\b", 'madam'),
    # titles, as Whisper expands them (the trailing space keeps "mr." from gluing onto the next word)
    (r'\bmr\b', 'mister '), (r'\bmrs\b', 'missus '), (r'\bst\b', 'saint '), (r'\bdr\b', 'doctor '),
    (r'\bprof\b', 'professor '), (r'\bcapt\b', 'captain '), (r'\bgov\b', 'governor '), (r'\bald\b', 'alderman '),
    (r'\bgen\b', 'general '), (r'\bsen\b', 'senator '), (r'\brep\b', 'representative '),
    (r'\bpres\b', 'president '), (r'\brev\b', 'reverend '), (r'\bhon\b', 'honorable '),
    (r'\basst\b', 'assistant '), (r'\bassoc\b', 'associate '), (r'\blt\b', 'lieutenant '),
    (r'\bcol\b', 'colonel '), (r'\bjr\b', 'junior '), (r'\bsr\b', 'senior '), (r'\besq\b', 'esquire '),
    # perfect tenses, where 's and 'd are has and had
    (r"'d been\b", ' had been'), (r"'s been\b", ' has been'), (r"'d gone\b", ' had gone'),
    (r"'s gone\b", ' has gone'), (r"'d done\b", ' had done'), (r"'s got\b", ' has got'),
    # the rest
    (r"n't\b", ' not'), (r"'re\b", ' are'), (r"'s\b", ' is'), (r"'d\b", ' would'), (r"'ll\b", ' will'),
    (r"'t\b", ' not'), (r"'ve\b", ' have'), (r"'m\b", ' am'),
]
CONTRACTIONS = [(re.compile(p), r) for p, r in CONTRACTIONS]

# Letters that NFKD does not split into a base letter and a mark.
LETTERS = {'œ': 'oe', 'Œ': 'OE', 'ø': 'o', 'Ø': 'O', 'æ': 'ae', 'Æ': 'AE', 'ß': 'ss', 'ẞ': 'SS', 'đ': 'd',
           'Đ': 'D', 'ð': 'd', 'Ð': 'D', 'þ': 'th', 'Þ': 'th', 'ł': 'l', 'Ł': 'L'}
NUMERIC_SYMBOLS = '.%$¢€£'


def _spellings():
    """British -> American for common words: each stem with the suffixes it takes."""
    table = {}
    our = ['colour', 'favour', 'honour', 'labour', 'neighbour', 'behaviour', 'humour', 'rumour', 'flavour',
           'harbour', 'vapour', 'armour', 'savour', 'endeavour', 'parlour', 'odour', 'vigour', 'splendour']
    for w in our:
        us = w[:-2] + 'r'
        for suffix in ['', 's', 'ed', 'ing', 'ful', 'able', 'ite', 'ites', 'hood']:
            table[w + suffix] = us + suffix
    for w in ['centre', 'theatre', 'metre', 'litre', 'fibre', 'calibre', 'sombre', 'spectre', 'lustre', 'meagre']:
        us = w[:-2] + 'er'
        for suffix, us_suffix in [('', ''), ('s', 's'), ('d', 'ed')]:
            table[w + suffix] = us + us_suffix
    for stem in ['realis', 'organis', 'recognis', 'apologis', 'criticis', 'emphasis', 'memoris', 'summaris',
                 'civilis', 'specialis', 'sympathis', 'categoris', 'familiaris', 'characteris', 'authoris',
                 'computeris', 'minimis', 'maximis', 'optimis', 'normalis', 'finalis', 'utilis', 'modernis']:
        for suffix in ['e', 'es', 'ed', 'ing', 'er', 'ers', 'ation', 'ations']:
            table[stem + suffix] = stem[:-1] + 'z' + suffix  # realise -> realize, civilisation -> civilization
    for stem in ['analys', 'paralys', 'catalys']:
        for suffix in ['e', 'es', 'ed', 'ing']:
            table[stem + suffix] = stem[:-1] + 'z' + suffix
    # single words, each British spelling followed by its American one
    words = '''
travelled traveled travelling traveling traveller traveler travellers travelers cancelled canceled
cancelling canceling labelled labeled modelled modeled jewellery jewelry defence defense offence offense
licence license pretence pretense grey gray greys grays programme program programmes programs catalogue catalog
catalogues catalogs dialogue dialog dialogues dialogs cheque check cheques checks tyre tire tyres tires
aluminium aluminum plough plow ploughs plows sceptic skeptic sceptical skeptical mould mold moulds molds
aesthetic esthetic aesthetics esthetics disc disk discs disks judgement judgment ageing aging enrol enroll
fulfil fulfill skilful skillful wilful willful manoeuvre maneuver manoeuvres maneuvers encyclopaedia encyclopedia
anaesthetic anesthetic oestrogen estrogen paediatric pediatric pyjamas pajamas kerb curb storey story
storeys stories draught draft practise practice practised practiced practising practicing'''.split()
    table.update(zip(words[::2], words[1::2]))
    return table


SPELLINGS = _spellings()


# -----------------------------------------------------------------------------
# numbers

ONES = {w: i for i, w in enumerate('one two three four five six seven eight nine ten eleven twelve thirteen '
                                   'fourteen fifteen sixteen seventeen eighteen nineteen'.split(), start=1)}
TENS = {w: 10 * i for i, w in enumerate('twenty thirty forty fifty sixty seventy eighty ninety'.split(), start=2)}
MULTIPLIERS = {'hundred': 100, 'thousand': 10 ** 3, 'million': 10 ** 6, 'billion': 10 ** 9, 'trillion': 10 ** 12}
ZEROS = {'zero', 'oh', 'o'}
ORDINALS = {'first': (1, 'st'), 'second': (2, 'nd'), 'third': (3, 'rd'), 'fifth': (5, 'th'), 'eighth': (8, 'th'),
            'ninth': (9, 'th'), 'twelfth': (12, 'th')}
ORDINALS.update({w + 'th': (v, 'th') for w, v in ONES.items() if v not in (1, 2, 3, 5, 8, 9, 12)})
ORDINALS.update({w[:-1] + 'ieth': (v, 'th') for w, v in TENS.items()})
ORDINALS.update({w + 'th': (v, 'th') for w, v in MULTIPLIERS.items()})
PLURALS = {('sixes' if w == 'six' else w + 's'): (v, 's') for w, v in ONES.items()}
PLURALS.update({w[:-1] + 'ies': (v, 's') for w, v in TENS.items()})
PLURALS.update({w + 's': (v, 's') for w, v in MULTIPLIERS.items()})
SIGNS = {'minus': '-', 'negative': '-', 'plus': '+', 'positive': '+'}
CURRENCIES = {'dollar': '$', 'dollars': '$', 'pound': '£', 'pounds': '£', 'euro': '€', 'euros': '€',
              'cent': '¢', 'cents': '¢'}
DIGITS = re.compile(r'^\d+(\.\d+)?$')


def _numeric(w):
    """Can w be (part of) a number?"""
    return w is not None and (w in ONES or w in TENS or w in MULTIPLIERS or w in ORDINALS or w in PLURALS
                              or w in ZEROS or DIGITS.match(w.lstrip('$£€¢+-')) is not None)


class _Number:
    """A number being read word by word. `value` is an int while the words add up and multiply as a cardinal
    ("three hundred twenty"), and a string of digits once they are read side by side instead ("nineteen
    eighty" -> "1980", "one two" -> "12")."""

    def __init__(self, prefix=''):
        self.value = None
        self.prefix = prefix  # a sign or a currency symbol
        self.last = None  # the kind of the last word read: 'ones', 'tens', 'zero', 'multiplier', 'digits'

    def add_ones(self, n):
        """one .. nineteen"""
        v = self.value
        if v is None:
            self.value = n
        elif isinstance(v, str) and self.last == 'tens' and n < 10:
            self.value = v[:-1] + str(n)  # "1980" + four: the tens' zero becomes the digit
        elif isinstance(v, str) or self.last in ('ones', 'zero', 'digits'):
            self.value = str(v) + str(n)  # side by side: "one two" -> "12", "nineteen five" -> "195"
        elif (v % 10 == 0 if n < 10 else v % 100 == 0):
            self.value = v + n  # "twenty" five, "three hundred" twelve
        else:
            self.value = str(v) + str(n)
        self.last = 'ones'

    def add_tens(self, n):
        """twenty .. ninety"""
        v = self.value
        if v is None:
            self.value = n
        elif isinstance(v, int) and v % 100 == 0:
            self.value = v + n  # "three hundred" twenty
        else:
            self.value = str(v) + str(n)  # "nineteen" eighty -> "1980", "twenty" twenty -> "2020"
        self.last = 'tens'

    def add_zero(self):
        self.value = ('' if self.value is None else str(self.value)) + '0'
        self.last = 'zero'

    def multiply(self, m):
        """hundred, thousand, ... -> False when the value cannot be multiplied (the caller starts a new number)."""
        v = self.value
        if v is None:
            self.value = m
        elif isinstance(v, str):
            try:
                f = Fraction(v) * m  # "1.5" million
            except (ValueError, ZeroDivisionError):
                return False
            if f.denominator != 1:
                return False
            self.value = f.numerator
        else:
            # only the part after the last thousand is multiplied: "two thousand three" hundred -> 2300
            self.value = v // 1000 * 1000 + v % 1000 * m
        self.last = 'multiplier'
        return True

    def text(self, suffix=''):
        return f'{self.prefix}{self.value}{suffix}'


def numbers_to_digits(s):
    """Spelled-out numbers -> digits, in text already lower-cased and stripped of punctuation (step 4 of
    `normalize`)."""
    # a digit next to a letter splits the word, except the ordinal and plural suffixes: "5th", "1960s"
    s = re.sub(r'([a-z])(\d)', r'\1 \2', s)
    s = re.sub(r'(\d)([a-z])', r'\1 \2', s)
    s = re.sub(r'(\d)\s+(st|nd|rd|th|s)\b', r'\1\2', s)
    words = s.split()
    out = []
    num = None  # the _Number being read
    sign = ''  # minus or plus before it

    def flush(suffix=''):
        nonlocal num
        if num is not None and num.value is not None:
            out.append(num.text(suffix))
        num = None

    def number():
        nonlocal num, sign
        if num is None:
            num, sign = _Number(sign), ''
        return num

    i = 0
    while i < len(words):
        w, nxt = words[i], words[i + 1] if i + 1 < len(words) else None
        i += 1
        bare = w[1:] if len(w) > 1 and w[0] in '$£€¢' else w
        if DIGITS.match(bare):
            if num is not None and isinstance(num.value, str) and num.value.endswith('.'):
                num.value += bare  # "point" 5
                num.last = 'digits'
                continue
            flush()
            n = number()
            n.prefix = w[0] if bare is not w else n.prefix
            n.value, n.last = (int(bare) if '.' not in bare else bare), 'digits'
        elif w in ONES:
            number().add_ones(ONES[w])
        elif w in TENS:
            number().add_tens(TENS[w])
        elif w in MULTIPLIERS:
            if not number().multiply(MULTIPLIERS[w]):
                flush()
                number().multiply(MULTIPLIERS[w])
        elif w == 'zero' or w in ZEROS and (num is not None or _numeric(nxt)):
            number().add_zero()  # "oh" is a zero only among numbers: "one oh one", not "oh no"
        elif w in ORDINALS or w in PLURALS:
            v, suffix = ORDINALS.get(w) or PLURALS[w]
            n = number()
            if v in MULTIPLIERS.values():
                if not n.multiply(v):
                    flush()
                    number().multiply(v)
            elif v >= 20:
                n.add_tens(v)
            else:
                n.add_ones(v)
            flush(suffix)  # "twenty first" -> 21st, "the sixties" -> the 60s
        elif w == 'point' and _numeric(nxt) and (num is None or isinstance(num.value, int)):
            n = number()
            n.value = f'{"" if n.value is None else n.value}.'
        elif w == 'and' and num is not None and num.last == 'multiplier' and _numeric(nxt):
            continue  # "three hundred and twelve"
        elif w in SIGNS and num is None and _numeric(nxt):
            sign = SIGNS[w]
        elif w in CURRENCIES and num is not None:
            num.prefix = CURRENCIES[w]  # "five dollars" -> $5
            flush()
        elif w == 'percent' and num is not None:
            flush('%')
        elif w == 'per' and nxt == 'cent' and num is not None:
            flush('%')
            i += 1
        else:
            flush()
            if sign:
                out.append({v: k for k, v in SIGNS.items()}[sign])
                sign = ''
            out.append(w)
    flush()
    s = ' '.join(out)
    s = re.sub(r'([€£$])(\d+) (?:and )?¢(\d{1,2})\b', lambda m: f'{m[1]}{m[2]}.{int(m[3]):02d}', s)  # $2.07
    return re.sub(r'\b1(s?)\b', r'one\1', s)  # a lone 1 is written "one", as Whisper's normaliser writes it


# -----------------------------------------------------------------------------
# normaliser

def strip_symbols(s, keep=NUMERIC_SYMBOLS):
    """Marks, symbols and punctuation -> spaces (except `keep`); diacritics dropped."""
    out = []
    for c in unicodedata.normalize('NFKD', s):
        if c in keep:
            out.append(c)
        elif c in LETTERS:
            out.append(LETTERS[c])
        elif unicodedata.category(c) == 'Mn':
            continue
        elif unicodedata.category(c)[0] in 'MSP':
            out.append(' ')
        else:
            out.append(c)
    return ''.join(out)


def normalize(text):
    """An English transcript -> lower-case words separated by single spaces (the module's doc lists the steps)."""
    s = text.lower()
    # 1. bracketed text and fillers
    s = re.sub(r'[<\[][^>\]]*[>\]]', '', s)
    s = re.sub(r'\(([^)]+?)\)', '', s)
    s = re.sub(FILLERS, '', s)
    # 2. contractions and titles
    s = s.replace('’', "'")
    s = re.sub(r"\s+'", "'", s)
    for pattern, replacement in CONTRACTIONS:
        s = pattern.sub(replacement, s)
    # 3. punctuation
    s = re.sub(r'(\d),(\d)', r'\1\2', s)
    s = re.sub(r'\.([^0-9]|$)', r' \1', s)
    s = strip_symbols(s)
    # 4. numbers, 5. spellings
    s = numbers_to_digits(s)
    s = ' '.join(SPELLINGS.get(w, w) for w in s.split())
    # 6. symbols attach to their numbers; any left alone go
    s = re.sub(r'([$¢€£])\s+(\d)', r'\1\2', s)
    s = re.sub(r'(\d)\s+%', r'\1%', s)
    s = re.sub(r'[.$¢€£]([^0-9]|$)', r' \1', s)
    s = re.sub(r'([^0-9]|^)%', r'\1 ', s)
    return ' '.join(s.split())


# -----------------------------------------------------------------------------
# word error rate

@dataclass
class Edits:
    """A word-level alignment's counts."""
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    ref_words: int = 0

    @property
    def errors(self):
        return self.substitutions + self.deletions + self.insertions

    @property
    def wer(self):
        """errors / reference words; None when there are no reference words."""
        return self.errors / self.ref_words if self.ref_words else None

    def __add__(self, other):
        return Edits(self.substitutions + other.substitutions, self.deletions + other.deletions,
                     self.insertions + other.insertions, self.ref_words + other.ref_words)


def align(ref, hyp):
    """Word lists -> Edits of a minimum-edit alignment (Levenshtein: substitution, deletion and insertion each
    cost 1). Of the alignments with fewest edits, the one with most substitutions is counted, as jiwer and
    sclite break ties."""
    # d[j] = (edits, -substitutions, substitutions, deletions, insertions) for ref[:i] against hyp[:j]
    d = [(j, 0, 0, 0, j) for j in range(len(hyp) + 1)]
    for i in range(1, len(ref) + 1):
        prev_diag, d[0] = d[0], (i, 0, 0, i, 0)
        for j in range(1, len(hyp) + 1):
            e, ns, s, dl, ins = prev_diag
            same = ref[i - 1] == hyp[j - 1]
            sub = (e, ns, s, dl, ins) if same else (e + 1, ns - 1, s + 1, dl, ins)
            e, ns, s, dl, ins = d[j]
            dele = (e + 1, ns, s, dl + 1, ins)
            e, ns, s, dl, ins = d[j - 1]
            inse = (e + 1, ns, s, dl, ins + 1)
            prev_diag, d[j] = d[j], min(sub, dele, inse)
    _, _, s, dl, ins = d[len(hyp)]
    return Edits(s, dl, ins, len(ref))


def edits(reference, hypothesis, normalizer=normalize):
    """Two transcripts -> Edits of their normalised words."""
    return align(normalizer(reference).split(), normalizer(hypothesis).split())


def wer(reference, hypothesis, normalizer=normalize):
    """One utterance's word error rate (None for an empty reference)."""
    return edits(reference, hypothesis, normalizer).wer


def corpus_wer(references, hypotheses, normalizer=normalize):
    """Corpus-level WER: all edits over all reference words -> Edits (its .wer is the rate)."""
    if len(references) != len(hypotheses):
        raise ValueError(f'{len(references)} references but {len(hypotheses)} hypotheses')
    total = Edits()
    for r, h in zip(references, hypotheses):
        total += edits(r, h, normalizer)
    return total


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    p.add_argument('ref', help='reference transcripts, a line each')
    p.add_argument('hyp', help='hypotheses, a line each, in the same order')
    args = p.parse_args(argv)
    with open(args.ref) as f:
        refs = f.read().splitlines()
    with open(args.hyp) as f:
        hyps = f.read().splitlines()
    e = corpus_wer(refs, hyps)
    print(f'WER {100 * e.wer:.2f}% ({e.errors} errors: {e.substitutions} sub, {e.deletions} del, '
          f'{e.insertions} ins, over {e.ref_words} reference words in {len(refs)} utterances)')


if __name__ == '__main__':
    main()
