"""Build `data/probes/general_knowledge.jsonl`, the forgetting probe, from the fact tables below.

Each row is one short question with a one-sentence reference answer, the key word of that answer (`answer`) and its
kind (`kind`: the lm-eval task swaps the key word only for another answer of the same kind, so a wrong choice is a
plausible wrong answer, never a capital offered for a number). The facts are everyday general knowledge a small
instruct model already knows, and they share nothing with the training data (Python's documentation): a tuned model
that gets fewer of them right has forgotten, it has not been taught.

Run: python data/build_probe.py   (rewrites the file; tests/test_harness.py checks it is in sync with this script)
"""

from __future__ import annotations

import json
from pathlib import Path

OUT = Path(__file__).resolve().parent / "probes" / "general_knowledge.jsonl"

CAPITALS = [
    ("France", "Paris"), ("Japan", "Tokyo"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"),
    ("Canada", "Ottawa"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"), ("Greece", "Athens"),
    ("Portugal", "Lisbon"), ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Austria", "Vienna"), ("Poland", "Warsaw"),
    ("Hungary", "Budapest"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"), ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"), ("Peru", "Lima"), ("Thailand", "Bangkok"), ("South Korea", "Seoul"),
    ("India", "New Delhi"), ("Australia", "Canberra"), ("Mexico", "Mexico City"), ("the United Kingdom", "London"),
    ("the United States", "Washington"), ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Cuba", "Havana"),
    ("the Czech Republic", "Prague"), ("Switzerland", "Bern"), ("Chile", "Santiago"), ("Colombia", "Bogota"),
    ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"),
]  # fmt: skip

SYMBOLS = [
    ("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("sodium", "Na"), ("potassium", "K"), ("oxygen", "O"),
    ("hydrogen", "H"), ("carbon", "C"), ("helium", "He"), ("copper", "Cu"), ("lead", "Pb"), ("nitrogen", "N"),
    ("calcium", "Ca"), ("zinc", "Zn"), ("mercury", "Hg"), ("tin", "Sn"),
]  # fmt: skip

WROTE = [
    ("Romeo and Juliet", "Shakespeare"), ("Hamlet", "Shakespeare"), ("Pride and Prejudice", "Austen"),
    ("War and Peace", "Tolstoy"), ("Don Quixote", "Cervantes"), ("The Odyssey", "Homer"),
    ("Oliver Twist", "Dickens"), ("Nineteen Eighty-Four", "Orwell"), ("Moby-Dick", "Melville"),
    ("The Old Man and the Sea", "Hemingway"), ("Crime and Punishment", "Dostoevsky"),
    ("The Adventures of Tom Sawyer", "Twain"), ("Frankenstein", "Shelley"), ("Harry Potter", "Rowling"),
]  # fmt: skip

CONTINENTS = [
    ("Kenya", "Africa"), ("Nigeria", "Africa"), ("Egypt", "Africa"), ("Brazil", "South America"),
    ("Argentina", "South America"), ("Peru", "South America"), ("Japan", "Asia"), ("India", "Asia"),
    ("Thailand", "Asia"), ("France", "Europe"), ("Poland", "Europe"), ("Norway", "Europe"),
    ("Canada", "North America"), ("Mexico", "North America"), ("Australia", "Oceania"),
]  # fmt: skip

LANGUAGES = [
    ("Brazil", "Portuguese"), ("Mexico", "Spanish"), ("France", "French"), ("Germany", "German"),
    ("Italy", "Italian"), ("Japan", "Japanese"), ("China", "Chinese"), ("Russia", "Russian"),
    ("Greece", "Greek"), ("Turkey", "Turkish"), ("Poland", "Polish"), ("the Netherlands", "Dutch"),
    ("Sweden", "Swedish"), ("Egypt", "Arabic"),
]  # fmt: skip

ARITHMETIC = [
    (2, "plus", 2), (3, "plus", 4), (5, "plus", 6), (7, "plus", 8), (9, "plus", 9), (12, "plus", 15),
    (20, "plus", 30), (45, "plus", 55), (10, "minus", 3), (15, "minus", 7), (20, "minus", 8), (100, "minus", 1),
    (50, "minus", 25), (9, "minus", 4), (2, "times", 3), (4, "times", 5), (6, "times", 7), (8, "times", 8),
    (3, "times", 9), (10, "times", 10), (12, "times", 12), (11, "times", 3), (10, "divided by", 2),
    (12, "divided by", 4), (20, "divided by", 5), (100, "divided by", 10), (81, "divided by", 9),
    (18, "divided by", 3),
]  # fmt: skip
OPS = {"plus": lambda a, b: a + b, "minus": lambda a, b: a - b, "times": lambda a, b: a * b,
       "divided by": lambda a, b: a // b}  # fmt: skip

COUNTS = [  # (question, sentence with {n}, n as a word)
    ("How many days are in a week?", "A week has {n} days.", "seven"),
    ("How many months are in a year?", "A year has {n} months.", "twelve"),
    ("How many legs does a spider have?", "A spider has {n} legs.", "eight"),
    ("How many legs does an insect have?", "An insect has {n} legs.", "six"),
    ("How many legs does a dog have?", "A dog has {n} legs.", "four"),
    ("How many legs does a bird have?", "A bird has {n} legs.", "two"),
    ("How many arms does an octopus have?", "An octopus has {n} arms.", "eight"),
    ("How many continents are there?", "There are {n} continents.", "seven"),
    ("How many sides does a triangle have?", "A triangle has {n} sides.", "three"),
    ("How many sides does a square have?", "A square has {n} sides.", "four"),
    ("How many sides does a hexagon have?", "A hexagon has {n} sides.", "six"),
    ("How many sides does a pentagon have?", "A pentagon has {n} sides.", "five"),
    ("How many wheels does a bicycle have?", "A bicycle has {n} wheels.", "two"),
    ("How many wheels does a tricycle have?", "A tricycle has {n} wheels.", "three"),
    ("How many players are on a soccer team on the field?", "A soccer team has {n} players on the field.", "eleven"),
    ("How many hearts does a human have?", "A human has {n} heart.", "one"),
    ("How many eyes does a human have?", "A human has {n} eyes.", "two"),
    ("How many fingers are on one human hand?", "One human hand has {n} fingers.", "five"),
    ("How many planets are in the solar system?", "There are {n} planets in the solar system.", "eight"),
    ("How many seasons are in a year?", "A year has {n} seasons.", "four"),
    ("How many hours are in a day?", "A day has {n} hours.", "24"),
    ("How many minutes are in an hour?", "An hour has {n} minutes.", "60"),
    ("How many seconds are in a minute?", "A minute has {n} seconds.", "60"),
    ("How many days are in a leap year?", "A leap year has {n} days.", "366"),
    ("How many days are in a normal year?", "A normal year has {n} days.", "365"),
    ("How many centimeters are in a meter?", "A meter has {n} centimeters.", "100"),
    ("How many grams are in a kilogram?", "A kilogram has {n} grams.", "1000"),
    ("How many years are in a century?", "A century has {n} years.", "100"),
    ("How many years are in a decade?", "A decade has {n} years.", "ten"),
    ("How many letters are in the English alphabet?", "The English alphabet has {n} letters.", "26"),
    ("How many strings does a standard guitar have?", "A standard guitar has {n} strings.", "six"),
    ("How many keys does a standard piano have?", "A standard piano has {n} keys.", "88"),
]  # fmt: skip

COLORS = [
    ("What color is the sky on a clear day?", "The sky is {x} on a clear day.", "blue"),
    ("What color are ripe bananas?", "Ripe bananas are {x}.", "yellow"),
    ("What color is grass?", "Grass is {x}.", "green"),
    ("What color is snow?", "Snow is {x}.", "white"),
    ("What color is coal?", "Coal is {x}.", "black"),
    ("What color are ripe tomatoes?", "Ripe tomatoes are {x}.", "red"),
    ("What color is an orange?", "An orange is {x}.", "orange"),
    ("What color do you get by mixing blue and yellow?", "Mixing blue and yellow gives {x}.", "green"),
    ("What color do you get by mixing red and white?", "Mixing red and white gives {x}.", "pink"),
    ("What color do you get by mixing black and white?", "Mixing black and white gives {x}.", "gray"),
    ("What color is a stop sign?", "A stop sign is {x}.", "red"),
    ("What color are most leaves in summer?", "Most leaves are {x} in summer.", "green"),
]  # fmt: skip

OPPOSITES = [
    ("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("day", "night"), ("happy", "sad"),
    ("open", "closed"), ("left", "right"), ("wet", "dry"), ("full", "empty"), ("old", "new"), ("light", "dark"),
    ("early", "late"), ("hard", "soft"), ("high", "low"), ("win", "lose"),
]  # fmt: skip

YOUNG = [
    ("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"), ("frog", "tadpole"),
    ("duck", "duckling"), ("goat", "kid"), ("bear", "cub"), ("kangaroo", "joey"),
]  # fmt: skip

SCIENCE = [  # (question, sentence, key word, kind)
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system.",
     "Jupiter", "planet"),
    ("Which planet is known as the Red Planet?", "Mars is known as the Red Planet.", "Mars", "planet"),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun.", "Mercury", "planet"),
    ("Which planet has the most famous rings?", "Saturn has the most famous rings.", "Saturn", "planet"),
    ("Which planet do we live on?", "We live on Earth.", "Earth", "planet"),
    ("Which planet is the hottest in the solar system?", "Venus is the hottest planet in the solar system.",
     "Venus", "planet"),
    ("What star is at the center of our solar system?", "The Sun is at the center of our solar system.", "Sun",
     "planet"),
    ("What natural satellite orbits the Earth?", "The Moon orbits the Earth.", "Moon", "planet"),
    ("What is the freezing point of water in Celsius?", "Water freezes at 0 degrees Celsius.", "0", "number"),
    ("What is the boiling point of water at sea level in Celsius?", "Water boils at 100 degrees Celsius at sea level.",
     "100", "number"),
    ("What gas do plants take in for photosynthesis?", "Plants take in carbon dioxide for photosynthesis.",
     "carbon dioxide", "gas"),
    ("What gas do humans need to breathe to live?", "Humans need oxygen to live.", "oxygen", "gas"),
    ("What gas makes up most of the air?", "Most of the air is nitrogen.", "nitrogen", "gas"),
    ("What is frozen water called?", "Frozen water is called ice.", "ice", "substance"),
    ("What is water vapor that falls as crystals called?", "Frozen crystals falling from clouds are called snow.",
     "snow", "substance"),
    ("Which organ pumps blood through the body?", "The heart pumps blood through the body.", "heart", "organ"),
    ("Which organ do humans use to breathe?", "Humans breathe with their lungs.", "lungs", "organ"),
    ("Which organ controls thinking?", "The brain controls thinking.", "brain", "organ"),
    ("What do bees make?", "Bees make honey.", "honey", "substance"),
    ("What do cows give that people drink?", "Cows give milk.", "milk", "substance"),
    ("What is the largest ocean on Earth?", "The Pacific is the largest ocean on Earth.", "Pacific", "place"),
    ("Which ocean lies between Europe and North America?", "The Atlantic lies between Europe and North America.",
     "Atlantic", "place"),
    ("What is the largest mammal?", "The blue whale is the largest mammal.", "whale", "animal"),
    ("What is the tallest animal?", "The giraffe is the tallest animal.", "giraffe", "animal"),
    ("What is the fastest land animal?", "The cheetah is the fastest land animal.", "cheetah", "animal"),
    ("Which animal is known as the king of the jungle?", "The lion is known as the king of the jungle.", "lion",
     "animal"),
    ("Which bird cannot fly and lives in Antarctica?", "The penguin lives in Antarctica and cannot fly.",
     "penguin", "animal"),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa.", "Nile", "place"),
    ("What is the longest river in South America?", "The Amazon is the longest river in South America.",
     "Amazon", "place"),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain in the world.",
     "Everest", "place"),
    ("What is the largest desert in Africa?", "The Sahara is the largest desert in Africa.", "Sahara", "place"),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa.", "Leonardo", "person"),
    ("Who developed the theory of relativity?", "Albert Einstein developed the theory of relativity.", "Einstein",
     "person"),
    ("Who is known for the laws of motion and gravity?", "Isaac Newton is known for the laws of motion and gravity.",
     "Newton", "person"),
    ("Who proposed the theory of evolution by natural selection?",
     "Charles Darwin proposed the theory of evolution by natural selection.", "Darwin", "person"),
    ("Who was the first person to walk on the Moon?", "Neil Armstrong was the first person to walk on the Moon.",
     "Armstrong", "person"),
    ("Which shape has no corners and is perfectly round?", "A circle is perfectly round and has no corners.",
     "circle", "shape"),
    ("What shape has three sides?", "A shape with three sides is a triangle.", "triangle", "shape"),
    ("What is the opposite of north?", "The opposite of north is south.", "south", "direction"),
    ("In which direction does the Sun rise?", "The Sun rises in the east.", "east", "direction"),
    ("In which direction does the Sun set?", "The Sun sets in the west.", "west", "direction"),
    ("What season comes after winter?", "Spring comes after winter.", "Spring", "season"),
    ("What is the hottest season of the year?", "Summer is the hottest season of the year.", "Summer", "season"),
    ("What season comes after summer?", "Autumn comes after summer.", "Autumn", "season"),
    ("What is the first month of the year?", "January is the first month of the year.", "January", "month"),
    ("What is the last month of the year?", "December is the last month of the year.", "December", "month"),
    ("Which month has the fewest days?", "February has the fewest days.", "February", "month"),
    ("What day comes after Monday?", "Tuesday comes after Monday.", "Tuesday", "weekday"),
    ("What day comes after Friday?", "Saturday comes after Friday.", "Saturday", "weekday"),
    ("What day comes before Monday?", "Sunday comes before Monday.", "Sunday", "weekday"),
    ("What do you call a doctor for teeth?", "A doctor for teeth is a dentist.", "dentist", "job"),
    ("Who flies an airplane?", "A pilot flies an airplane.", "pilot", "job"),
    ("Who puts out fires?", "A firefighter puts out fires.", "firefighter", "job"),
    ("What light gas fills party balloons?", "Party balloons are filled with helium.", "helium", "gas"),
    ("Which organ do humans use to see?", "Humans see with their eyes.", "eyes", "organ"),
    ("Which organ digests food?", "The stomach digests food.", "stomach", "organ"),
    ("Where does a compass needle point?", "A compass needle points north.", "north", "direction"),
    ("What is the coldest season of the year?", "Winter is the coldest season of the year.", "Winter", "season"),
    ("Which month comes after June?", "July comes after June.", "July", "month"),
    ("What day comes after Wednesday?", "Thursday comes after Wednesday.", "Thursday", "weekday"),
    ("Who teaches students at school?", "A teacher teaches students at school.", "teacher", "job"),
    ("What shape has four equal sides and four right angles?", "A shape with four equal sides and four right "
     "angles is a square.", "square", "shape"),
    ("What shape is a ball?", "A ball is a sphere.", "sphere", "shape"),
]  # fmt: skip


# Other right ways to say a key word: a generated answer that uses one of them counts as right (scoring.answer_match
# also reads number words as digits, ignores case and accents)
ALIASES = {
    "Washington": ["Washington, D.C."], "New Delhi": ["Delhi"], "Bogota": ["Bogotá"], "gray": ["grey"],
    "Autumn": ["fall"], "Leonardo": ["da Vinci"], "Chinese": ["Mandarin"], "Oceania": ["Australia"],
    "whale": ["blue whale"], "closed": ["shut"], "small": ["little"], "lose": ["loss"], "kid": ["goatling"],
    "Everest": ["Mount Everest"], "carbon dioxide": ["CO2"], "Austen": ["Jane Austen"],
}  # fmt: skip


def rows() -> list[dict]:
    out = []

    def add(question: str, sentence: str, answer: str, kind: str) -> None:
        row = {
            "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": sentence}],
            "answer": answer,
            "kind": kind,
        }
        out.append(row | ({"aliases": ALIASES[answer]} if answer in ALIASES else {}))

    for country, city in CAPITALS:
        add(f"What is the capital of {country}?", f"The capital of {country} is {city}.", city, "capital")
    for element, symbol in SYMBOLS:
        add(f"What is the chemical symbol for {element}?", f"The chemical symbol for {element} is {symbol}.",
            symbol, "symbol")  # fmt: skip
    for book, author in WROTE:
        add(f"Who wrote {book}?", f"{book} was written by {author}.", author, "author")
    for country, continent in CONTINENTS:
        add(f"On which continent is {country}?", f"{country} is in {continent}.", continent, "continent")
    for country, language in LANGUAGES:
        add(f"What is the main language of {country}?", f"The main language of {country} is {language}.",
            language, "language")  # fmt: skip
    for a, op, b in ARITHMETIC:
        n = str(OPS[op](a, b))
        add(f"What is {a} {op} {b}?", f"{a} {op} {b} is {n}.", n, "number")
    for question, sentence, n in COUNTS:
        add(question, sentence.format(n=n), n, "number")
    for question, sentence, color in COLORS:
        add(question, sentence.format(x=color), color, "color")
    for word, opposite in OPPOSITES:
        add(f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}.", opposite, "opposite")
    for animal, young in YOUNG:
        add(f"What is a baby {animal} called?", f"A baby {animal} is called a {young}.", young, "young animal")
    for question, sentence, key, kind in SCIENCE:
        add(question, sentence, key, kind)
    questions = [r["messages"][0]["content"] for r in out]
    kinds: dict[str, set[str]] = {}
    for r in out:
        kinds.setdefault(r["kind"], set()).add(r["answer"].lower())
    thin = sorted(k for k, answers in kinds.items() if len(answers) < 4)
    if thin:  # the lm-eval task offers three wrong answers of the same kind
        raise ValueError(f"these kinds have fewer than 4 distinct answers: {thin}")
    dupes = sorted({q for q in questions if questions.count(q) > 1})
    if dupes:
        raise ValueError(f"the probe asks these questions twice: {dupes}")
    return out


def text() -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows())


if __name__ == "__main__":
    OUT.write_text(text(), encoding="utf-8")
    print(f"wrote {len(rows())} questions to {OUT}")
