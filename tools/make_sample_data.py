"""Write the small SQuAD-format sample shipped in data/sample/ (written for this project).

Fictional towns, people and ships, so no answer can be known without reading the context:

    python tools/make_sample_data.py data/sample

It writes train-v1.1.json and dev-v1.1.json (official layout), dev-v2.0.json (with unanswerable
questions) and the same dev set as JSON Lines and CSV in the flat Hub layout.
"""

import csv
import json
import os
import random
import sys

SYLLABLES = ["vel", "dor", "mar", "ka", "len", "tor", "is", "ber", "gan", "ul", "ro", "sen", "wi", "fa", "nth", "el"]
TRADES = ["salt", "wool", "amber", "timber", "copper", "glass", "linen", "silver"]
RIVERS = ["Orsa", "Tamble", "Wenn", "Ilvar", "Sode", "Brisk", "Maun", "Carrow"]
TITLES = ["Countess", "Duke", "Abbot", "Captain", "Mayor", "Baroness", "Bishop", "Admiral"]
ANIMALS = ["heron", "stag", "otter", "falcon", "badger", "lynx", "swan", "boar"]
COLOURS = ["green", "scarlet", "blue", "golden", "black", "white", "violet", "grey"]


def word(rng, n=2):
    return "".join(rng.choice(SYLLABLES) for _ in range(n)).capitalize()


def town_article(rng, index):
    town, founder = word(rng, 3), f"{rng.choice(TITLES)} {word(rng)} {word(rng)}"
    river, trade, year = rng.choice(RIVERS), rng.choice(TRADES), str(rng.randint(900, 1800))
    animal, colour, people = rng.choice(ANIMALS), rng.choice(COLOURS), f"{rng.randint(2, 90)},{rng.randint(100, 999)}"
    facts = [
        (f"{town} is a market town on the {river} river.", f"On which river does {town} lie?", river),
        (f"It was founded in {year} by {founder}.", f"When was {town} founded?", year),
        (None, f"Who founded {town}?", founder),
        (f"For centuries its wealth came from the {trade} trade.", f"Which trade made {town} wealthy?", trade),
        (f"The town's banner shows a {colour} {animal}.", f"What animal is on the banner of {town}?", animal),
        (f"Today about {people} people live there.", f"How many people live in {town}?", people),
    ]
    return town, facts


def ship_article(rng, index):
    ship, captain, port = (
        f"the {word(rng)}",
        f"{rng.choice(TITLES[3:4] + TITLES[7:])} {word(rng)} {word(rng)}",
        word(rng, 3),
    )
    year, cargo, crew = str(rng.randint(1500, 1900)), rng.choice(TRADES), str(rng.randint(12, 400))
    facts = [
        (f"{ship.capitalize()} was a merchant ship built in {port}.", f"Where was {ship} built?", port),
        (f"She was launched in {year} and carried {cargo} across the northern sea.", f"What did {ship} carry?", cargo),
        (None, f"In what year was {ship} launched?", year),
        (
            f"Her most famous master was {captain}, who sailed with a crew of {crew}.",
            f"Who was the most famous master of {ship}?",
            captain,
        ),
        (None, f"How large was the crew of {ship}?", crew),
    ]
    return ship, facts


def make_paragraph(rng, pid, v2=False):
    kind = town_article if pid % 2 == 0 else ship_article
    title, facts = kind(rng, pid)
    sentences = [s for s, _, _ in facts if s]
    context = " ".join(sentences)
    qas = []
    for q, (_, question, answer) in enumerate(facts):
        start = context.find(answer)
        assert start >= 0, (answer, context)
        qas.append(
            {"id": f"{pid:04d}{q:02d}", "question": question, "answers": [{"text": answer, "answer_start": start}]}
        )
    if v2:
        for q, question in enumerate([f"Who destroyed {title} in the great fire?", f"What is the motto of {title}?"]):
            qas.append({"id": f"{pid:04d}9{q}", "question": question, "answers": [], "is_impossible": True})
    return title, {"context": context, "qas": qas}


def official(rng, first, count, v2=False):
    data = []
    for pid in range(first, first + count):
        title, paragraph = make_paragraph(rng, pid, v2)
        data.append({"title": title, "paragraphs": [paragraph]})
    return {"version": "v2.0" if v2 else "1.1", "data": data}


def flat_rows(doc):
    for article in doc["data"]:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                yield {
                    "id": qa["id"],
                    "title": article["title"],
                    "context": paragraph["context"],
                    "question": qa["question"],
                    "answers": {
                        "text": [a["text"] for a in qa["answers"]],
                        "answer_start": [a["answer_start"] for a in qa["answers"]],
                    },
                }


def main(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    files = {
        "train-v1.1.json": official(random.Random(0), 0, 40),
        "dev-v1.1.json": official(random.Random(1), 1000, 8),
        "dev-v2.0.json": official(random.Random(1), 1000, 8, v2=True),
    }
    for name, doc in files.items():
        with open(os.path.join(out_dir, name), "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
    rows = list(flat_rows(files["dev-v1.1.json"]))
    with open(os.path.join(out_dir, "dev-v1.1.jsonl"), "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    with open(os.path.join(out_dir, "dev-v1.1.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows({**r, "answers": json.dumps(r["answers"])} for r in rows)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "data/sample")
