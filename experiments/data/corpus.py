"""Text corpora for word2vec, as one int32 array of word ids with sentence boundaries.

Sources (`--dataset`, or `--corpus_file` which wins):

- "gensim_text" (the embedded default, offline): the English text that gensim ships in its wheel
  under `gensim/test/test_data/`:
    * `enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2`: a shortened
      Wikipedia XML dump. Main-namespace pages are read with `gensim.corpora.wikicorpus`
      (`extract_pages`, then `filter_wiki`, which strips links, templates, tables, references
      and other markup); `#REDIRECT` pages are skipped. 107 articles, ~0.49M tokens.
    * `head500.noblanks.cor`: 250 Wikipedia documents, one a line, already Porter-stemmed by
      gensim ("philosophi", "anarch"), ~0.34M tokens.
    * `lee_background.cor`: 299 news documents (the Lee corpus), one a line, ~0.06M tokens.
  656 documents, 883,448 tokens in all (not the ~2.2M the issue estimated; that is close to
  the files' size in bytes); at min_count=5 a vocabulary of 16,418 words covering 817,053.
- "text8": the first 10^8 bytes of a cleaned English Wikipedia (Matt Mahoney), ~17M tokens on
  one line, downloaded once from `TEXT8_URL` into the cache directory and verified against a
  pinned SHA-256 (of the zip and of the extracted file).
- `--corpus_file=PATH[,PATH...]`: any UTF-8 text files; each line is one document.

Tokenisation (the same for every source): the text is lower-cased (`str.lower`) and split into
maximal runs of Unicode word characters (`re.findall(r"\\w+")`: letters, digits and underscore),
so punctuation and markup separate words ("don't" -> "don", "t"; "al-Khwarizmi" -> "al",
"khwarizmi").

Documents (a line of a text file, a Wikipedia article) are cut into sentences of at most
`MAX_SENTENCE_LENGTH` = 10,000 tokens, the longest sentence gensim's word2vec trains on (it
silently drops the rest of a longer one), so gensim and our pipeline see the same sentences.
Training windows never cross a sentence boundary.

Vocabulary: words seen at least `min_count` times, sorted by descending count, ties broken by
the word itself (code-point order), so the ids do not depend on file order. Out-of-vocabulary
tokens are removed from the sentences before training (as word2vec and gensim do, which widens
the effective window around them).

Every expected failure (unknown source, missing or undecodable file, failed download, checksum
mismatch, empty vocabulary) raises `ConfigError` with one line.
"""

import bz2
import collections
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

import numpy as np

from experiments.runtime.errors import ConfigError

DATASETS = ("gensim_text", "text8")

MAX_SENTENCE_LENGTH = 10_000
TOKEN_PATTERN = re.compile(r"\w+")

GENSIM_WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
GENSIM_LINE_FILES = ("head500.noblanks.cor", "lee_background.cor")

TEXT8_URL = "http://mattmahoney.net/dc/text8.zip"
# Pinned digests: the zip (31,344,016 bytes) and the extracted file (10^8 bytes).
TEXT8_ZIP_SHA256 = "a6640522afe85d1963ad56c05b0ede0a0c000dddc9671758a6cc09b7a38e5232"
TEXT8_SHA256 = "6e890197040d37d85beb962ae1f041ff1d9a9ca8d20c7d99c85027eebf51dca7"
TEXT8_MEMBER = "text8"


def tokenize(text):
    """Lower-cases `text` and returns its maximal runs of word characters (`\\w+`)."""
    return TOKEN_PATTERN.findall(text.lower())


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Words sorted by descending count (ties by the word), with their counts.

    Attributes:
        words: The words; `words[i]` has id i.
        counts: int64 (vocab_size,) corpus counts, non-increasing.
        index: word -> id.
    """

    words: tuple
    counts: np.ndarray
    index: dict = dataclasses.field(repr=False)

    def __len__(self):
        return len(self.words)

    @classmethod
    def from_counter(cls, counter, min_count):
        kept = [(w, c) for w, c in counter.items() if c >= min_count]
        kept.sort(key=lambda wc: (-wc[1], wc[0]))
        words = tuple(w for w, _ in kept)
        counts = np.array([c for _, c in kept], dtype=np.int64)
        return cls(words, counts, {w: i for i, w in enumerate(words)})


@dataclasses.dataclass(frozen=True)
class Corpus:
    """A tokenised corpus: in-vocabulary word ids, cut into sentences.

    Attributes:
        name: Where it came from ("gensim_text", "text8" or the file names).
        vocab: The `Vocabulary`.
        ids: int32 (num_tokens,) word ids of all sentences, concatenated.
        offsets: int64 (num_sentences + 1,); sentence s is ids[offsets[s]:offsets[s + 1]].
        raw_tokens: Number of tokens before out-of-vocabulary words were removed.
        documents: Number of documents (lines, articles) read.
    """

    name: str
    vocab: Vocabulary
    ids: np.ndarray
    offsets: np.ndarray
    raw_tokens: int
    documents: int

    @property
    def num_tokens(self):
        return int(self.ids.shape[0])

    @property
    def num_sentences(self):
        return int(self.offsets.shape[0] - 1)

    def sentences(self):
        """The sentences as lists of words (what gensim's Word2Vec takes), in corpus order."""
        words = np.array(self.vocab.words, dtype=object)
        for s in range(self.num_sentences):
            yield words[self.ids[self.offsets[s]:self.offsets[s + 1]]].tolist()

    def summary(self):
        return {
            "corpus": self.name,
            "documents": self.documents,
            "sentences": self.num_sentences,
            "raw_tokens": self.raw_tokens,
            "tokens": self.num_tokens,
            "vocab_size": len(self.vocab),
        }


def _split_long(tokens, max_length):
    for start in range(0, len(tokens), max_length):
        yield tokens[start:start + max_length]


def build_corpus(documents, *, min_count=5, name="corpus", max_sentence_length=MAX_SENTENCE_LENGTH):
    """Builds a `Corpus` from documents given as lists of tokens.

    Args:
        documents: Iterable of token lists (already tokenised); empty ones are skipped.
        min_count: Words seen fewer times are dropped from the vocabulary and the sentences.
        name: Recorded in `Corpus.name`.
        max_sentence_length: Documents are cut into sentences of at most this many tokens
            (counted before out-of-vocabulary words are removed), so gensim, which trains on at
            most 10,000 words of a sentence, never truncates one.

    Returns:
        The `Corpus`.

    Raises:
        ConfigError: If no word occurs `min_count` times.
    """
    if min_count < 1:
        raise ConfigError(f"min_count must be >= 1, not {min_count}")
    sentences = []
    counter = collections.Counter()
    num_documents = 0
    for tokens in documents:
        if not tokens:
            continue
        num_documents += 1
        counter.update(tokens)
        sentences.extend(_split_long(tokens, max_sentence_length))
    raw_tokens = sum(counter.values())
    vocab = Vocabulary.from_counter(counter, min_count)
    if not len(vocab):
        raise ConfigError(
            f"{name}: no word occurs min_count={min_count} times ({raw_tokens} tokens read)"
        )
    index = vocab.index
    lengths = np.zeros(len(sentences) + 1, dtype=np.int64)
    chunks = []
    for s, tokens in enumerate(sentences):
        ids = [index[t] for t in tokens if t in index]
        lengths[s + 1] = len(ids)
        chunks.append(ids)
    ids = np.fromiter((i for chunk in chunks for i in chunk), dtype=np.int32,
                      count=int(lengths.sum()))
    # Sentences that lost every token to min_count are dropped (empty intervals are harmless but
    # gensim skips them too).
    nonempty = np.concatenate([[True], lengths[1:] > 0])
    offsets = np.cumsum(lengths[nonempty])
    return Corpus(name, vocab, ids, offsets, raw_tokens, num_documents)


def _read_text(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigError(f"could not read corpus file {path}: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"corpus file {path} is not UTF-8 text (byte {e.start}: {e.reason})"
        ) from None


def line_documents(paths):
    """Yields the tokens of every line of the UTF-8 text files `paths` (one document a line).

    Raises:
        ConfigError: If a file is missing, unreadable or not UTF-8.
    """
    texts = [(p, _read_text(p)) for p in paths]  # fail on any bad file before building anything
    for _, text in texts:
        for line in text.splitlines():
            yield tokenize(line)


def wiki_documents(path):
    """Yields the tokens of every main-namespace, non-redirect article of a bz2 XML dump."""
    from gensim.corpora import wikicorpus  # noqa: PLC0415 (optional heavy import)

    try:
        with bz2.open(path) as f:
            for _, text, _ in wikicorpus.extract_pages(f, filter_namespaces=("0",)):
                if text.lstrip().lower().startswith("#redirect"):
                    continue
                yield tokenize(wikicorpus.filter_wiki(text))
    except (OSError, EOFError) as e:
        raise ConfigError(f"could not read Wikipedia dump {path}: {e}") from None


def gensim_data_path(name):
    """The path of file `name` in gensim's shipped test data (`gensim.test.utils.datapath`)."""
    try:
        from gensim.test.utils import datapath  # noqa: PLC0415
    except ImportError:
        raise ConfigError("the embedded corpus needs gensim (pip install gensim)") from None
    path = datapath(name)
    if not os.path.exists(path):
        raise ConfigError(f"gensim's test data lacks {name} (looked in {os.path.dirname(path)})")
    return path


def gensim_documents():
    """The embedded corpus's documents: the Wikipedia dump's articles, then the two line files."""
    yield from wiki_documents(gensim_data_path(GENSIM_WIKI_FILE))
    yield from line_documents([gensim_data_path(n) for n in GENSIM_LINE_FILES])


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def download_text8(cache_dir=None, *, url=TEXT8_URL, zip_sha256=TEXT8_ZIP_SHA256,
                   sha256=TEXT8_SHA256):
    """Returns the path of the extracted text8 file, downloading and verifying it once.

    The zip is fetched from `url` into `cache_dir` (default `~/.keras/datasets/text8`), its
    SHA-256 checked against `zip_sha256`, the member `text8` extracted and checked against
    `sha256`. A verified extracted file already in `cache_dir` is used without a network.

    Raises:
        ConfigError: On a failed download, a checksum mismatch or a malformed zip.
    """
    cache_dir = cache_dir or os.path.join(os.path.expanduser("~"), ".keras", "datasets", "text8")
    target = os.path.join(cache_dir, TEXT8_MEMBER)
    if os.path.exists(target) and _sha256(target) == sha256:
        return target
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create text8 cache directory {cache_dir}: {e}") from None
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        archive = os.path.join(tmp, "text8.zip")
        try:
            with urllib.request.urlopen(url, timeout=60) as response, open(archive, "wb") as f:
                shutil.copyfileobj(response, f, 1 << 20)
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise ConfigError(f"could not download text8 from {url}: {e}") from None
        got = _sha256(archive)
        if got != zip_sha256:
            raise ConfigError(f"text8 download from {url} has SHA-256 {got}, expected {zip_sha256}")
        try:
            with zipfile.ZipFile(archive) as z:
                z.extract(TEXT8_MEMBER, tmp)
        except (zipfile.BadZipFile, KeyError) as e:
            raise ConfigError(f"text8 archive from {url} is malformed: {e}") from None
        extracted = os.path.join(tmp, TEXT8_MEMBER)
        got = _sha256(extracted)
        if got != sha256:
            raise ConfigError(f"extracted text8 has SHA-256 {got}, expected {sha256}")
        os.replace(extracted, target)
    return target


@functools.lru_cache(maxsize=4)
def _load_cached(dataset, corpus_files, min_count, data_dir):
    if corpus_files:
        name = ",".join(os.path.basename(p) for p in corpus_files)
        return build_corpus(line_documents(corpus_files), min_count=min_count, name=name)
    if dataset == "gensim_text":
        return build_corpus(gensim_documents(), min_count=min_count, name=dataset)
    if dataset == "text8":
        cache = os.path.join(data_dir, "text8") if data_dir else None
        return build_corpus(line_documents([download_text8(cache)]), min_count=min_count,
                            name=dataset)
    raise ConfigError(f"unknown --dataset={dataset!r}; choose one of {', '.join(DATASETS)}")


def load_corpus(dataset="gensim_text", *, corpus_files=None, min_count=5, data_dir=None):
    """Loads and tokenises a corpus (cached in-process per arguments).

    Args:
        dataset: One of `DATASETS`; ignored when `corpus_files` is given.
        corpus_files: A path, a comma-separated string of paths, or a list of paths of UTF-8
            text files (one document a line).
        min_count: Minimum count of a vocabulary word.
        data_dir: Where text8 is cached (`<data_dir>/text8`); default `~/.keras/datasets/text8`.

    Returns:
        A `Corpus`.

    Raises:
        ConfigError: For an unknown dataset, bad files, a failed download or an empty vocabulary.
    """
    if isinstance(corpus_files, str):
        corpus_files = [p for p in corpus_files.split(",") if p]
    files = tuple(os.path.abspath(os.path.expanduser(p)) for p in (corpus_files or ()))
    return _load_cached(dataset, files, int(min_count), data_dir)
