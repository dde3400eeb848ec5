"""whisper_t5x.text.normalize against openai-whisper's EnglishTextNormalizer (installed in the
test env): the same output on every sentence below except the listed, deliberate differences."""

import pytest

from whisper_t5x.text.normalize import BasicNormalizer, EnglishNormalizer, normalizer_for, word_error_rate

AGREE = [
    "Hello, world!", "I can't believe it's not butter.", "Mr. Smith went to Washington.",
    "He paid twenty five dollars for it.", "It was nineteen ninety five.",
    "About fifty percent of them [laughs] left.", "One hundred and five people", "three point five",
    "I'm gonna go, um, home.", "She's been there since 2020.", "The colour of the centre.",
    "twenty first century", "Café au lait, naïve résumé", "1,000,000 people", "We'll see (maybe).",
    "I've got two thousand and twenty one reasons", "It costs $5.", "fifty cents", "Dr. Who?",
    "The year two thousand", "ten million dollars", "He's the best.", "The meeting's at 3 p.m.",
    "ninety nine percent", "zero", "and so on", "twelve hundred", "Ain't no sunshine",
    "They'd gone home, hadn't they?", "The first and the third.", "  Spaces   everywhere  ",
    "Let's meet at the theatre at 7.", "She realised it was grey.", "a thousand years",
]

# sentence -> (ours, openai-whisper's): where we differ on purpose
DIFFER = {
    # "second" is a unit of time far more often than an ordinal; we convert it only after a number
    "Wait a second.": ("wait a second", "wait a 2nd"),
    # we do not glue spelled-out digits into one number
    "one two three": ("1 2 3", "123"),
    "seven thirty": ("7 30", "730"),
    # decades are left alone
    "They're in the twenties.": ("they are in the twenties", "they are in the 20s"),
}


@pytest.fixture(scope="module")
def theirs():
    normalizers = pytest.importorskip("whisper.normalizers")
    return normalizers.EnglishTextNormalizer()


@pytest.mark.parametrize("sentence", AGREE)
def test_agrees_with_openai_whisper(theirs, sentence):
    assert EnglishNormalizer()(sentence) == theirs(sentence)


@pytest.mark.parametrize("sentence", sorted(DIFFER))
def test_listed_differences(theirs, sentence):
    ours, openai = DIFFER[sentence]
    assert theirs(sentence) == openai  # the difference is real (the reference did not change)
    assert EnglishNormalizer()(sentence) == ours


def test_basic_normalizer_keeps_letters():
    assert BasicNormalizer()("¡Buenos días, señor! (risas) ¿Qué tal?") == "buenos días señor qué tal"
    assert normalizer_for("es")("Él dijo: «sí».") == "él dijo sí"
    assert normalizer_for("en")("Twenty percent.") == "20%"


def test_word_error_rate():
    assert word_error_rate("The cat sat on the mat.", "the cat sat on the mat") == 0.0
    assert word_error_rate("It cost twenty five dollars", "It cost $25.") == 0.0
    assert word_error_rate("a b c d", "a x c") == pytest.approx(0.5)  # one substitution, one deletion
    assert word_error_rate("", "") == 0.0 and word_error_rate("", "words") == float("inf")
