"""Chat instructions for self-distilling SmolLM2-135M-Instruct into a block-diffusion model.

The autoregressive model answers each prompt greedily and the diffusion model learns to write what it wrote, so the
prompts only need to be varied and within reach of a 135M instruct model: short, unambiguous questions answerable in
1-3 sentences. There are no reference answers. Six kinds (KINDS) are drawn from small inline word lists and
templates: arithmetic, facts, lists, rewrite, explain, and multiturn (two user turns around a generator-written
assistant turn, the second question depending on the first).

Splits are disjoint by construction: a prompt's split is a function of its text, `split_of(key)`, "test" when the
SHA-256 of the key is 0 mod 8 (about 1 in 8 texts), else "train". `prompt` redraws a candidate until its key belongs
to the requested split, so no test text can ever be drawn for train, whatever the seeds.

Determinism: prompt (kind, split, seed, index) comes from its own random.Random seeded by a SHA-256 of
"kind|split|seed|index", so it depends on nothing else (not on PYTHONHASHSEED nor on other prompts), and
`generate(split, seed, count)` returns the same list every time.
"""

import hashlib
import random
from dataclasses import dataclass

KINDS = ("arithmetic", "facts", "lists", "rewrite", "explain", "multiturn")
SPLITS = ("train", "test")
_TEST_MODULUS = 8  # a key is "test" when its hash is 0 mod this: about 1 in 8 prompts
_MAX_TRIES = 10_000  # draws before giving up; a test key turns up within ~8 draws, so this is never reached in use

# Ways to pose a single-turn question; they multiply the distinct texts without making any harder to answer.
_WRAPPERS = ("Quick question: {}", "{} Keep your answer short.", "Please answer briefly. {}", "Hi! {}", "{} Thanks!",
             "I was wondering: {}", "{} Answer in one or two sentences.")
_NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five"}
_NAMES = ("Ana", "Ben", "Chloe", "David", "Emma", "Farid", "Grace", "Hugo", "Ines", "Jack", "Kenji", "Lena", "Maria",
          "Noah", "Olga", "Pedro", "Priya", "Sam", "Tom", "Yuki", "Zara", "Leo")

# (country, capital): questions both ways, and the multiturn follow-ups whose assistant turn states the capital.
_CAPITALS = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("India", "New Delhi"), ("Brazil", "Brasilia"), ("Canada", "Ottawa"),
    ("Mexico", "Mexico City"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("Australia", "Canberra"),
    ("Argentina", "Buenos Aires"), ("Kenya", "Nairobi"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"), ("Turkey", "Ankara"), ("Ireland", "Dublin"),
    ("Peru", "Lima"), ("Chile", "Santiago"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("South Korea", "Seoul"),
    ("the Netherlands", "Amsterdam"), ("Belgium", "Brussels"), ("Austria", "Vienna"), ("Switzerland", "Bern"),
    ("Denmark", "Copenhagen"), ("Finland", "Helsinki"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"),
    ("Cuba", "Havana"), ("Colombia", "Bogota"), ("Indonesia", "Jakarta"), ("the United Kingdom", "London"),
    ("the United States", "Washington, D.C."),
)
_PLANETS = ("Mercury", "Venus", "Mars", "Jupiter", "Saturn", "Uranus", "Neptune")
_ANIMAL_SOUNDS = ("cow", "dog", "cat", "duck", "sheep", "pig", "horse", "lion", "owl", "frog", "rooster", "bee",
                  "snake", "mouse", "goat", "donkey", "wolf")
_LEGS = ("a spider", "a dog", "a bird", "an insect", "a horse", "an ant", "a chicken", "a cat", "a duck", "a beetle")
_COLOURED = ("the sky", "grass", "snow", "a banana", "a strawberry", "a carrot", "coal", "a lemon", "a leaf",
             "a ripe tomato", "a cloud", "milk", "chocolate", "a pumpkin", "the sea", "a cherry", "a lime",
             "a polar bear", "a fire truck", "an egg yolk")
_OPPOSITES = ("hot", "big", "fast", "up", "day", "happy", "light", "open", "old", "tall", "wet", "full", "early",
              "hard", "loud", "rich", "strong", "left", "inside", "begin", "win", "push", "love", "black", "high",
              "thick", "heavy", "empty", "clean", "near", "young", "sweet", "brave", "buy", "remember", "north",
              "quiet", "true", "asleep", "first")
_COUNTS = (("days", "a week"), ("months", "a year"), ("hours", "a day"), ("minutes", "an hour"),
           ("seconds", "a minute"), ("days", "a year"), ("weeks", "a year"), ("letters", "the English alphabet"),
           ("continents", "the world"), ("colours", "a rainbow"), ("players", "a football team"),
           ("cards", "a standard deck"), ("sides", "a triangle"), ("sides", "a square"), ("sides", "a hexagon"),
           ("centimetres", "a metre"), ("grams", "a kilogram"), ("years", "a century"), ("years", "a decade"),
           ("eggs", "a dozen"), ("strings", "a guitar"), ("keys", "a piano"))
_GENERAL_FACTS = (
    "Which planet is closest to the Sun?", "What is the largest planet in our solar system?",
    "Which planet is known as the Red Planet?", "How many planets are in our solar system?",
    "Which planet do we live on?", "What is the largest ocean on Earth?", "What is the tallest animal?",
    "What is the largest mammal?", "At what temperature does water boil in Celsius?", "What do bees make?",
    "What gas do plants take in from the air?", "What is the fastest land animal?", "What do caterpillars turn into?",
    "Which season comes after winter?", "What is frozen water called?",
    "Which animal is known as the king of the jungle?",
    "What is the closest star to Earth?", "What do we call a baby cat?", "What do we call a baby dog?",
    "Which is the longest river in Africa?",
)
_FACT_TEMPLATES = {  # fact type -> (templates, fillers); each filler is a dict of format fields
    "capital": (("What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital of {c}.",
                 "Tell me the capital of {c}.", "What city is the capital of {c}?"),
                [{"c": c} for c, _ in _CAPITALS]),
    "capital_of": (("Which country has {k} as its capital?", "{k} is the capital of which country?",
                    "In which country is {k} the capital?"), [{"k": k} for _, k in _CAPITALS]),
    "planet": (("Is {p} a planet or a star?", "Is {p} closer to the Sun than Earth?", "Tell me one fact about {p}.",
                "Is {p} bigger than Earth?"), [{"p": p} for p in _PLANETS]),
    "sound": (("What sound does a {a} make?", "What noise does a {a} make?", "What does a {a} say?",
               "Which sound does a {a} make?"), [{"a": a} for a in _ANIMAL_SOUNDS]),
    "legs": (("How many legs does {a} have?", "How many legs has {a} got?"), [{"a": a} for a in _LEGS]),
    "colour": (("What colour is {x}?", "What color is {x}?", "What is the usual colour of {x}?",
                "Which colour is {x} usually?"), [{"x": x} for x in _COLOURED]),
    "opposite": (("What is the opposite of {w}?", "What word means the opposite of {w}?",
                  'Give me the opposite of "{w}".', "What is an antonym of {w}?"), [{"w": w} for w in _OPPOSITES]),
    "count": (("How many {n} are in {c}?", "How many {n} are there in {c}?", "Tell me how many {n} are in {c}."),
              [{"n": n, "c": c} for n, c in _COUNTS]),
    "general": (("{q}",), [{"q": q} for q in _GENERAL_FACTS]),
}
_LIST_CATEGORIES = ("fruits", "vegetables", "colours", "sea animals", "mammals", "birds", "countries in Europe",
                    "musical instruments", "sports", "things you find in a kitchen", "farm animals", "flowers",
                    "vehicles", "planets", "jobs", "school subjects", "insects", "breakfast foods", "drinks",
                    "shapes", "languages", "wild animals", "tools", "board games")
_LIST_TEMPLATES = ("List {n} {c}.", "Name {n} {c}.", "Give me {n} examples of {c}.", "Can you name {n} {c}?",
                   "Tell me {n} {c}.", "Write down {n} {c}.")
_SUBJECTS = ("My sister", "The teacher", "Tom", "The old man", "A little girl", "My friend", "The farmer",
             "Our neighbour", "The doctor", "Maria")
# (third-person present, base form, past) of each action, so every rewrite is built from a correct sentence
_ACTIONS = (
    ("eats an apple", "eat an apple", "ate an apple"), ("takes the bus", "take the bus", "took the bus"),
    ("drinks a cup of tea", "drink a cup of tea", "drank a cup of tea"),
    ("walks to school", "walk to school", "walked to school"),
    ("plays the piano", "play the piano", "played the piano"),
    ("writes a letter", "write a letter", "wrote a letter"), ("cooks dinner", "cook dinner", "cooked dinner"),
    ("cleans the kitchen", "clean the kitchen", "cleaned the kitchen"),
    ("waters the garden", "water the garden", "watered the garden"),
    ("paints the fence", "paint the fence", "painted the fence"),
    ("buys some bread", "buy some bread", "bought some bread"),
    ("watches a film", "watch a film", "watched a film"), ("opens the window", "open the window", "opened the window"),
    ("feeds the dog", "feed the dog", "fed the dog"), ("visits the museum", "visit the museum", "visited the museum"),
)
_TIMES = ("", " every morning", " on Sundays", " in the evening", " after lunch", " at the weekend")
_INFORMAL = ("I wanna {v}{t}.", "Gonna {v}{t}, ok?", "Hey, can u {v}{t}?", "Can't {v}{t}, sorry.",
             "We gotta {v}{t}.", "Yeah, I'll {v}{t}, no worries.")
_PHRASES = ("Good morning", "Thank you very much", "Where is the train station?", "I like apples", "The cat is black",
            "See you tomorrow", "My name is Paul", "How are you?", "I am hungry", "The weather is nice today",
            "Where is the bathroom?", "I have two brothers", "The book is on the table", "Happy birthday",
            "What time is it?", "I love music", "The water is cold", "Good night", "I live in a small house",
            "Can you help me?", "The dog is sleeping", "I drink coffee every day", "It is raining",
            "We are going to the beach", "Open the door, please")
_EXPLAIN_THINGS = ("a volcano", "an island", "a rainbow", "a library", "a computer", "a cloud", "a desert", "a river",
                   "a bridge", "a museum", "a planet", "a star", "a battery", "a dictionary", "a calendar", "an ocean",
                   "a forest", "a verb", "a noun", "a triangle", "a recipe", "a hospital", "a farm", "a robot",
                   "a mountain", "a holiday", "gravity", "photosynthesis", "electricity", "democracy", "friendship",
                   "recycling", "the internet", "exercise", "music", "energy", "money", "history", "science",
                   "a budget", "an election", "a vitamin", "a fossil", "an earthquake", "a habit")
_WHY = ("is the sky blue", "do leaves change colour in autumn", "do we need sleep", "does ice float on water",
        "do birds fly south in winter", "do we have seasons", "does the Moon change shape", "do cats purr",
        "is exercise good for you", "do plants need sunlight", "is the sea salty", "do stars twinkle",
        "do onions make people cry", "do we need to drink water", "do we brush our teeth", "does bread go stale")
_TOOLS = ("a hammer", "a thermometer", "a compass", "an umbrella", "a refrigerator", "a telescope", "a calculator",
          "a map", "a ladder", "a microscope", "a kettle", "a stapler", "a clock", "a toothbrush", "a magnet")
_EXPLAIN_TEMPLATES = (
    (("Explain in one sentence what {x} is.", "What is {x}? Answer briefly.", "Describe {x} in one sentence.",
      "In simple words, what is {x}?"), _EXPLAIN_THINGS),
    (("Why {x}?", "Briefly, why {x}?", "Why {x}? Explain in one sentence.", "In one sentence, why {x}?"), _WHY),
    (("What is {x} used for?", "What do people use {x} for?", "Explain in one sentence what {x} does."), _TOOLS),
)
_ITEMS = ("apples", "pencils", "books", "stickers", "cookies", "marbles", "oranges", "balloons", "cards", "stamps")
_HOBBIES = ("tennis", "football", "swimming", "chess", "painting", "cooking", "reading", "dancing", "cycling",
            "gardening", "singing", "photography")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "black", "white")
_PETS = ("dog", "cat", "rabbit", "parrot", "hamster", "goldfish", "turtle")
_PET_NAMES = ("Max", "Bella", "Luna", "Charlie", "Coco", "Milo", "Daisy", "Rocky", "Nala", "Oscar")
_SHOPPING = ("milk", "eggs", "bread", "rice", "cheese", "apples", "butter", "tea", "pasta", "tomatoes", "soap")


def _hash64(text: str) -> int:
    """A stable 64-bit hash (Python's hash() of a str changes with PYTHONHASHSEED)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big")


def _check(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid {what}s: {', '.join(valid)}")


@dataclass(frozen=True)
class Prompt:
    """One chat prompt: user/assistant messages in transformers' format, ending with a user turn."""

    kind: str
    messages: tuple[dict, ...]

    @property
    def key(self) -> str:
        """The text that defines the prompt's identity (and hence its split)."""
        return "\n".join(message["content"] for message in self.messages)


def split_of(key: str) -> str:
    """"test" for about 1 in 8 keys, else "train"; a function of the text alone, so the splits never share one."""
    return "test" if _hash64(key) % _TEST_MODULUS == 0 else "train"


def _wrap(rng: random.Random, question: str) -> str:
    """Half the single-turn questions are posed plainly, the rest in one of the _WRAPPERS."""
    return question if rng.random() < 0.5 else rng.choice(_WRAPPERS).format(question)


def _arithmetic(rng: random.Random) -> tuple[str, ...]:
    """Small numbers only (every operand and answer below 200): a 135M model can do these, or at least try."""
    op = rng.choice(("add", "add3", "sub", "mul", "div", "half", "double"))
    if op == "add":
        values = {"a": rng.randint(1, 99), "b": rng.randint(1, 99)}
        templates = ("What is {a} + {b}?", "What is {a} plus {b}?", "Add {a} and {b}.",
                     "What is the sum of {a} and {b}?")
    elif op == "add3":
        values = {"a": rng.randint(1, 30), "b": rng.randint(1, 30), "c": rng.randint(1, 30)}
        templates = ("What is {a} + {b} + {c}?", "Add {a}, {b} and {c}.")
    elif op == "sub":
        a = rng.randint(10, 150)
        values = {"a": a, "b": rng.randint(1, a - 1)}  # the answer stays positive
        templates = ("What is {a} - {b}?", "What is {a} minus {b}?", "Subtract {b} from {a}.",
                     "What is {b} less than {a}?")
    elif op == "mul":
        values = {"a": rng.randint(2, 12), "b": rng.randint(2, 12)}
        templates = ("What is {a} times {b}?", "What is {a} x {b}?", "Multiply {a} by {b}.",
                     "What is {a} multiplied by {b}?")
    elif op == "div":
        b = rng.randint(2, 10)
        values = {"a": b * rng.randint(2, 12), "b": b}  # exact division: the answer is a whole number
        templates = ("What is {a} divided by {b}?", "Divide {a} by {b}.", "What is {a} / {b}?")
    elif op == "half":
        values = {"a": 2 * rng.randint(1, 50)}  # even, so the half is a whole number
        templates = ("What is half of {a}?", "Halve {a}.")
    else:
        values = {"a": rng.randint(1, 50)}
        templates = ("What is double {a}?", "What is twice {a}?")
    return (_wrap(rng, rng.choice(templates).format(**values)),)


def _facts(rng: random.Random) -> tuple[str, ...]:
    templates, fillers = _FACT_TEMPLATES[rng.choice(tuple(_FACT_TEMPLATES))]
    return (_wrap(rng, rng.choice(templates).format(**rng.choice(fillers))),)


def _lists(rng: random.Random) -> tuple[str, ...]:
    n = rng.randint(2, 5)
    count = _NUMBER_WORDS[n] if rng.random() < 0.7 else str(n)
    return (_wrap(rng, rng.choice(_LIST_TEMPLATES).format(n=count, c=rng.choice(_LIST_CATEGORIES))),)


def _rewrite(rng: random.Random) -> tuple[str, ...]:
    """Rewrite tasks carry no wrapper: extra words next to the sentence would blur what is to be rewritten."""
    subject, (present, base, past), time = rng.choice(_SUBJECTS), rng.choice(_ACTIONS), rng.choice(_TIMES)
    task = rng.choice(("past", "question", "formal", "grammar", "translate"))
    if task == "past":
        instruction = rng.choice(("Rewrite this sentence in the past tense:", "Change this sentence to the past tense:",
                                  "Put this sentence in the past tense:"))
        return (f"{instruction} {subject} {present}{time}.",)
    if task == "question":
        instruction = rng.choice(("Turn this sentence into a question:", "Rewrite this sentence as a question:"))
        return (f"{instruction} {subject} {past}{time}.",)
    if task == "formal":
        instruction = rng.choice(("Make this sentence more formal:", "Rewrite this sentence in a polite, formal way:"))
        return (f"{instruction} {rng.choice(_INFORMAL).format(v=base, t=time)}",)
    if task == "grammar":
        # one deliberate error: a bare verb after a singular subject, "don't" for "doesn't", or a doubled past
        wrong = rng.choice((f"{subject} {base}{time}.", f"{subject} don't {base}{time}.",
                            f"{subject} didn't {past}{time}."))
        instruction = rng.choice(("Fix the grammar:", "Correct the grammar in this sentence:", "Fix the mistake:"))
        return (f"{instruction} {wrong}",)
    language, phrase = rng.choice(("French", "Spanish", "German")), rng.choice(_PHRASES)
    return (rng.choice(("Translate to {l}: {p}", "How do you say \"{p}\" in {l}?")).format(l=language, p=phrase),)


def _explain(rng: random.Random) -> tuple[str, ...]:
    templates, things = rng.choice(_EXPLAIN_TEMPLATES)
    return (_wrap(rng, rng.choice(templates).format(x=rng.choice(things))),)


def _multiturn(rng: random.Random) -> tuple[str, ...]:
    """user, assistant, user: the assistant turn is fixed text, and the last question needs the first turn."""
    name, scene = rng.choice(_NAMES), rng.choice(("hobby", "items", "colour", "pet", "age", "number", "shopping",
                                                  "capital", "sum"))
    if scene == "hobby":
        hobby = rng.choice(_HOBBIES)
        return (f"My name is {name} and I like {hobby}.", f"Nice to meet you, {name}!",
                rng.choice(("What do I like?", "What is my name?", "What is my hobby?",
                            "Can you remind me what I like?")))
    if scene == "items":
        item, a, b = rng.choice(_ITEMS), rng.randint(2, 20), rng.randint(1, 9)
        if rng.random() < 0.5:
            return f"I have {a} {item} and buy {b} more.", "Okay.", f"How many {item} do I have now?"
        b = min(b, a - 1)  # never give away more than we have
        return f"I have {a} {item} and give {b} away.", "Okay.", f"How many {item} do I have left?"
    if scene == "colour":
        colour = rng.choice(_COLOURS)
        return (f"My favourite colour is {colour}.", f"{colour.capitalize()} is a lovely colour!",
                rng.choice(("What is my favourite colour?", "Name a fruit that has my favourite colour.")))
    if scene == "pet":
        pet, pet_name = rng.choice(_PETS), rng.choice(_PET_NAMES)
        return (f"I have a {pet} called {pet_name}.", "What a lovely pet!",
                rng.choice(("What is my pet's name?", f"What kind of animal is {pet_name}?")))
    if scene == "age":
        age = rng.randint(8, 70)
        return (f"Hi, I'm {name} and I am {age} years old.", f"Hello, {name}! Thanks for telling me.",
                rng.choice(("How old will I be next year?", "How old was I one year ago?", "How old am I?")))
    if scene == "number":
        n, m = rng.randint(1, 50), rng.randint(1, 20)
        return (f"Please remember the number {n}.", f"Okay, I will remember {n}.",
                rng.choice(("What number did I ask you to remember?", f"What is that number plus {m}?")))
    if scene == "shopping":
        things = rng.sample(_SHOPPING, 3)
        return (f"I need to buy {things[0]}, {things[1]} and {things[2]}.", "Got it.",
                rng.choice(("What do I need to buy?", "How many things do I need to buy?")))
    if scene == "capital":
        (country, capital), (other, _) = rng.sample(_CAPITALS, 2)
        return (f"What is the capital of {country}?", f"The capital of {country} is {capital}.",
                f"And what about {other}?")
    a, b, c = rng.randint(1, 40), rng.randint(1, 40), rng.randint(1, 20)
    return (f"What is {a} + {b}?", f"{a} + {b} = {a + b}.",
            rng.choice((f"And if I add {c} more?", f"What is that number minus {c}?")))


_BUILDERS = {"arithmetic": _arithmetic, "facts": _facts, "lists": _lists, "rewrite": _rewrite,
             "explain": _explain, "multiturn": _multiturn}


def prompt(kind: str, split: str, seed: int, index: int) -> Prompt:
    """Prompt `index` of `kind` for (split, seed): redrawn until its text belongs to `split` (see split_of)."""
    _check("kind", kind, KINDS)
    _check("split", split, SPLITS)
    rng = random.Random(_hash64(f"{kind}|{split}|{seed}|{index}"))
    for _ in range(_MAX_TRIES):
        contents = _BUILDERS[kind](rng)
        candidate = Prompt(kind, tuple({"role": ("user", "assistant")[i % 2], "content": content}
                                       for i, content in enumerate(contents)))
        if split_of(candidate.key) == split:
            return candidate
    raise RuntimeError(f"no {split} prompt of kind {kind!r} in {_MAX_TRIES} draws")


def generate(split: str, seed: int, count: int) -> list[Prompt]:
    """`count` distinct prompts, kinds round-robin: prompt i is of kind KINDS[i % 6].

    Without duplicates, prompt i is prompt(KINDS[i % 6], split, seed, i // 6); a prompt whose text already occurred
    is skipped and that kind's next index drawn instead, so later indices of that kind shift (still deterministic).
    """
    _check("split", split, SPLITS)
    if count < 0:
        raise ValueError(f"count must be a non-negative integer (>= 0), got {count}")
    next_index = dict.fromkeys(KINDS, 0)
    seen: set[str] = set()
    prompts = []
    for i in range(count):
        kind = KINDS[i % len(KINDS)]
        for _ in range(_MAX_TRIES):
            candidate = prompt(kind, split, seed, next_index[kind])
            next_index[kind] += 1
            if candidate.key not in seen:
                break
        else:
            raise RuntimeError(f"{kind!r} ran out of distinct {split} prompts after {len(prompts)} prompts")
        seen.add(candidate.key)
        prompts.append(candidate)
    return prompts
