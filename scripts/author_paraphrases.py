"""Author the ParaRel-style paraphrase set: src/editlens/data/paraphrases.json.

This file is the single source of the data: the tables below list, per relation, the templates
(``[X]`` marks the subject; each ends where the object goes) and the (subject, gold object) facts.
Running it

    python scripts/author_paraphrases.py            # verify with the embedded model, split, write json
    python scripts/author_paraphrases.py --no-model # reuse the verification stored in the json

1. checks the tables (every template has one ``[X]`` and ends without the object, no duplicate
   subject within a relation, the subject appears verbatim in each prompt),
2. scores every prompt with the embedded SmolLM2-135M-Instruct (prediction = argmax over the
   relation's candidates of the mean per-token negative log-likelihood of ``" " + candidate``),
3. drops the subjects the model gets wrong on *every* template (it does not know the fact at all;
   the list is kept in the json under ``"dropped"``). Consistency is never used to select data,
4. splits deterministically (seed 0): by subject, grouping identical subject strings across
   relations, and by whole relations,
5. writes the json with the verification numbers (per-relation accuracy and pairwise consistency).

Used in: Chapter 1 and 2 (through :func:`editlens.data.load_paraphrases`), book/data.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "src" / "editlens" / "data" / "paraphrases.json"
sys.path.insert(0, str(ROOT / "src"))
from editlens.data.paraphrases import (  # noqa: E402  (the split rules live in the library)
    SEED,
    SUBJECT_FRACTIONS,
    assign_relation_splits,
    assign_subject_splits,
)

# --------------------------------------------------------------------------------------------
# The tables. Only true, well-known facts; subjects with a disputed or multi-valued object are
# left out (e.g. countries with several official languages, cities/landmarks whose country name
# needs an article such as "the United States").
# --------------------------------------------------------------------------------------------

RELATIONS: dict[str, dict] = {}


def relation(rid: str, name: str, wikidata: str, templates: list[str], facts: str) -> None:
    """Register one relation; ``facts`` holds one ``subject | object`` per line."""
    pairs = []
    for line in facts.strip().splitlines():
        subject, obj = (part.strip() for part in line.split("|"))
        pairs.append((subject, obj))
    RELATIONS[rid] = {"name": name, "wikidata": wikidata, "templates": templates, "facts": pairs}


relation(
    "capital", "capital of a country", "P36",
    [
        "The capital of [X] is",
        "[X]'s capital city is",
        "[X], whose capital is",
        "The capital city of [X] is",
        "The seat of government of [X] is in",
        "Q: What is the capital of [X]? A:",
        "The city that serves as the capital of [X] is",
    ],
    """
    France | Paris
    Germany | Berlin
    Italy | Rome
    Spain | Madrid
    Portugal | Lisbon
    Japan | Tokyo
    China | Beijing
    Russia | Moscow
    Egypt | Cairo
    Greece | Athens
    Ireland | Dublin
    Norway | Oslo
    Sweden | Stockholm
    Finland | Helsinki
    Denmark | Copenhagen
    Poland | Warsaw
    Austria | Vienna
    Hungary | Budapest
    Belgium | Brussels
    Switzerland | Bern
    Turkey | Ankara
    Iran | Tehran
    Iraq | Baghdad
    Saudi Arabia | Riyadh
    India | New Delhi
    Pakistan | Islamabad
    Thailand | Bangkok
    Vietnam | Hanoi
    South Korea | Seoul
    Australia | Canberra
    New Zealand | Wellington
    Canada | Ottawa
    Mexico | Mexico City
    Brazil | Brasília
    Argentina | Buenos Aires
    Chile | Santiago
    Peru | Lima
    Cuba | Havana
    Kenya | Nairobi
    Nigeria | Abuja
    Ethiopia | Addis Ababa
    Romania | Bucharest
    Iceland | Reykjavik
    Scotland | Edinburgh
    England | London
    """,
)

relation(
    "language", "official language of a country", "P37",
    [
        "The official language of [X] is",
        "In [X], most people speak",
        "The language spoken in [X] is",
        "[X]'s official language is",
        "The main language of [X] is",
        "Q: What language do people speak in [X]? A:",
        "If you travel to [X], the local language you will hear is",
    ],
    """
    France | French
    Germany | German
    Austria | German
    Italy | Italian
    Spain | Spanish
    Mexico | Spanish
    Argentina | Spanish
    Colombia | Spanish
    Chile | Spanish
    Peru | Spanish
    Cuba | Spanish
    Portugal | Portuguese
    Brazil | Portuguese
    Japan | Japanese
    South Korea | Korean
    China | Chinese
    Russia | Russian
    Greece | Greek
    Sweden | Swedish
    Norway | Norwegian
    Denmark | Danish
    Poland | Polish
    Turkey | Turkish
    Iran | Persian
    Egypt | Arabic
    Saudi Arabia | Arabic
    Syria | Arabic
    Israel | Hebrew
    Vietnam | Vietnamese
    Thailand | Thai
    Indonesia | Indonesian
    Hungary | Hungarian
    Romania | Romanian
    Bulgaria | Bulgarian
    Iceland | Icelandic
    Ukraine | Ukrainian
    Mongolia | Mongolian
    Bangladesh | Bengali
    Ethiopia | Amharic
    Serbia | Serbian
    """,
)

relation(
    "continent", "continent of a country", "P30",
    [
        "[X] is a country in",
        "[X] is located on the continent of",
        "The continent where [X] lies is",
        "[X] is part of the continent of",
        "Q: On which continent is [X]? A:",
        "Geographically, [X] belongs to",
        "The country of [X] is found in",
    ],
    """
    Kenya | Africa
    Nigeria | Africa
    Ghana | Africa
    Ethiopia | Africa
    South Africa | Africa
    Morocco | Africa
    Senegal | Africa
    Tanzania | Africa
    Uganda | Africa
    Zimbabwe | Africa
    Algeria | Africa
    Cameroon | Africa
    Japan | Asia
    China | Asia
    India | Asia
    Thailand | Asia
    Vietnam | Asia
    Pakistan | Asia
    Nepal | Asia
    Mongolia | Asia
    Bangladesh | Asia
    South Korea | Asia
    Malaysia | Asia
    France | Europe
    Germany | Europe
    Spain | Europe
    Italy | Europe
    Poland | Europe
    Sweden | Europe
    Norway | Europe
    Greece | Europe
    Portugal | Europe
    Ireland | Europe
    Austria | Europe
    Hungary | Europe
    Canada | North America
    Mexico | North America
    Cuba | North America
    Jamaica | North America
    Guatemala | North America
    Honduras | North America
    Brazil | South America
    Argentina | South America
    Chile | South America
    Peru | South America
    Colombia | South America
    Venezuela | South America
    Bolivia | South America
    Ecuador | South America
    Uruguay | South America
    Paraguay | South America
    """,
)

relation(
    "currency", "currency of a country", "P38",
    [
        "The currency of [X] is the",
        "In [X], people pay with the",
        "The official currency of [X] is the",
        "[X]'s currency is called the",
        "The money used in [X] is the",
        "Q: What is the currency of [X]? A: The",
        "To go shopping in [X], you need to exchange your money for the",
    ],
    """
    Japan | yen
    India | rupee
    Pakistan | rupee
    China | yuan
    Russia | ruble
    Mexico | peso
    Argentina | peso
    Chile | peso
    Colombia | peso
    Brazil | real
    South Korea | won
    Switzerland | franc
    Sweden | krona
    Norway | krone
    Denmark | krone
    Poland | zloty
    Turkey | lira
    South Africa | rand
    Thailand | baht
    Israel | shekel
    Vietnam | dong
    Indonesia | rupiah
    Germany | euro
    France | euro
    Italy | euro
    Spain | euro
    Portugal | euro
    Greece | euro
    Ireland | euro
    Austria | euro
    Finland | euro
    Canada | dollar
    Australia | dollar
    New Zealand | dollar
    Egypt | pound
    England | pound
    Hungary | forint
    Saudi Arabia | riyal
    Malaysia | ringgit
    Nigeria | naira
    Ukraine | hryvnia
    Kenya | shilling
    """,
)

relation(
    "city_country", "country of a city", "P17",
    [
        "[X] is a city in",
        "[X] is located in the country of",
        "The city of [X] is in",
        "The country where [X] is located is",
        "Q: In which country is [X]? A:",
        "[X] is one of the largest cities in",
        "Tourists who visit [X] are travelling in",
    ],
    """
    Barcelona | Spain
    Seville | Spain
    Valencia | Spain
    Munich | Germany
    Hamburg | Germany
    Frankfurt | Germany
    Cologne | Germany
    Milan | Italy
    Venice | Italy
    Florence | Italy
    Naples | Italy
    Osaka | Japan
    Kyoto | Japan
    Shanghai | China
    Mumbai | India
    Kolkata | India
    Sydney | Australia
    Melbourne | Australia
    Toronto | Canada
    Vancouver | Canada
    Montreal | Canada
    Rio de Janeiro | Brazil
    São Paulo | Brazil
    Istanbul | Turkey
    Saint Petersburg | Russia
    Marseille | France
    Lyon | France
    Casablanca | Morocco
    Lagos | Nigeria
    Johannesburg | South Africa
    Cape Town | South Africa
    Auckland | New Zealand
    Krakow | Poland
    Porto | Portugal
    Geneva | Switzerland
    Zurich | Switzerland
    Busan | South Korea
    Karachi | Pakistan
    Gothenburg | Sweden
    Salzburg | Austria
    """,
)

relation(
    "athlete_sport", "sport of a famous athlete", "P641",
    [
        "[X] is famous for playing",
        "The sport associated with [X] is",
        "[X] became a star in the sport of",
        "[X] is known as one of the greatest players in the history of",
        "Q: Which sport is [X] known for? A:",
        "[X] earned worldwide fame playing",
        "Fans remember [X] as a legend of",
    ],
    """
    Lionel Messi | football
    Cristiano Ronaldo | football
    Neymar | football
    Pelé | football
    David Beckham | football
    Zinedine Zidane | football
    Kylian Mbappé | football
    Diego Maradona | football
    Ronaldinho | football
    Wayne Rooney | football
    Michael Jordan | basketball
    LeBron James | basketball
    Kobe Bryant | basketball
    Stephen Curry | basketball
    Shaquille O'Neal | basketball
    Magic Johnson | basketball
    Larry Bird | basketball
    Roger Federer | tennis
    Rafael Nadal | tennis
    Serena Williams | tennis
    Novak Djokovic | tennis
    Andy Murray | tennis
    Venus Williams | tennis
    Pete Sampras | tennis
    Steffi Graf | tennis
    Tiger Woods | golf
    Jack Nicklaus | golf
    Arnold Palmer | golf
    Phil Mickelson | golf
    Babe Ruth | baseball
    Derek Jeter | baseball
    Jackie Robinson | baseball
    Joe DiMaggio | baseball
    Sachin Tendulkar | cricket
    Virat Kohli | cricket
    Don Bradman | cricket
    Brian Lara | cricket
    Wayne Gretzky | hockey
    Sidney Crosby | hockey
    Mario Lemieux | hockey
    """,
)

relation(
    "product_maker", "company that makes a product", "P176",
    [
        "[X] is made by",
        "[X] is a product of",
        "The company behind [X] is",
        "[X] was created by the company",
        "[X] is produced by",
        "Q: Which company makes [X]? A:",
        "[X], a product made by",
    ],
    """
    iPhone | Apple
    iPad | Apple
    MacBook | Apple
    iPod | Apple
    AirPods | Apple
    Macintosh | Apple
    Windows | Microsoft
    Xbox | Microsoft
    Excel | Microsoft
    PowerPoint | Microsoft
    PlayStation | Sony
    Walkman | Sony
    Android | Google
    Gmail | Google
    Mustang | Ford
    Corolla | Toyota
    Prius | Toyota
    Camry | Toyota
    Civic | Honda
    Accord | Honda
    Beetle | Volkswagen
    Passat | Volkswagen
    Kindle | Amazon
    Alexa | Amazon
    Game Boy | Nintendo
    Wii | Nintendo
    Photoshop | Adobe
    Acrobat | Adobe
    Big Mac | McDonald's
    Happy Meal | McDonald's
    Whopper | Burger King
    Barbie | Mattel
    Hot Wheels | Mattel
    Pentium | Intel
    GeForce | Nvidia
    Model S | Tesla
    """,
)

relation(
    "profession", "profession of a famous person", "P106",
    [
        "[X] was a famous",
        "By profession, [X] was a",
        "[X] is best known as a",
        "[X] worked as a",
        "[X] is remembered as a great",
        "Q: What was [X] famous as? A: A",
        "Historians describe [X] as an influential",
    ],
    """
    Albert Einstein | physicist
    Niels Bohr | physicist
    Max Planck | physicist
    Stephen Hawking | physicist
    Richard Feynman | physicist
    Enrico Fermi | physicist
    Pablo Picasso | painter
    Vincent van Gogh | painter
    Claude Monet | painter
    Rembrandt | painter
    Salvador Dalí | painter
    Frida Kahlo | painter
    Edvard Munch | painter
    Wolfgang Amadeus Mozart | composer
    Ludwig van Beethoven | composer
    Johann Sebastian Bach | composer
    Frédéric Chopin | composer
    Pyotr Ilyich Tchaikovsky | composer
    Antonio Vivaldi | composer
    Richard Wagner | composer
    Charles Dickens | novelist
    Jane Austen | novelist
    Leo Tolstoy | novelist
    Ernest Hemingway | novelist
    Fyodor Dostoevsky | novelist
    Agatha Christie | novelist
    Plato | philosopher
    Aristotle | philosopher
    Socrates | philosopher
    Immanuel Kant | philosopher
    Friedrich Nietzsche | philosopher
    Confucius | philosopher
    Euclid | mathematician
    Carl Friedrich Gauss | mathematician
    Leonhard Euler | mathematician
    Srinivasa Ramanujan | mathematician
    Emily Dickinson | poet
    Walt Whitman | poet
    Robert Frost | poet
    """,
)

relation(
    "landmark_country", "country of a landmark", "P17",
    [
        "The country that is home to [X] is",
        "Tourists travel to see [X] in",
        "The country where [X] is located is",
        "If you want to visit [X], you have to travel to",
        "Q: In which country is [X]? A:",
        "You can see [X] on a trip to",
        "The famous landmark known as [X] is in",
    ],
    """
    the Eiffel Tower | France
    the Louvre | France
    the Arc de Triomphe | France
    Mont Saint-Michel | France
    the Colosseum | Italy
    the Leaning Tower of Pisa | Italy
    the Trevi Fountain | Italy
    the Taj Mahal | India
    the Forbidden City | China
    the Terracotta Army | China
    the Kremlin | Russia
    Red Square | Russia
    the Sagrada Família | Spain
    the Alhambra | Spain
    the Acropolis | Greece
    the Parthenon | Greece
    the Pyramids of Giza | Egypt
    the Great Sphinx of Giza | Egypt
    Machu Picchu | Peru
    Christ the Redeemer | Brazil
    the Sydney Opera House | Australia
    Uluru | Australia
    Mount Fuji | Japan
    Angkor Wat | Cambodia
    Petra | Jordan
    the Brandenburg Gate | Germany
    Neuschwanstein Castle | Germany
    Chichen Itza | Mexico
    the CN Tower | Canada
    Hagia Sophia | Turkey
    Mount Kilimanjaro | Tanzania
    Table Mountain | South Africa
    Borobudur | Indonesia
    the Atomium | Belgium
    Easter Island | Chile
    """,
)

relation(
    "color", "usual color of a common thing", "P462",
    [
        "The color of [X] is",
        "The usual color of [X] is",
        "Ask anyone about the color of [X] and they will say",
        "The typical colour of [X] is",
        "Describe the color of [X] in one word:",
        "Q: What is the color of [X]? A:",
        "If you paint a picture of [X], the paint you need is",
    ],
    """
    ripe bananas | yellow
    lemons | yellow
    sunflowers | yellow
    egg yolks | yellow
    grass | green
    limes | green
    broccoli | green
    cucumbers | green
    the clear sky | blue
    the ocean | blue
    blueberries | blue
    sapphires | blue
    fresh snow | white
    milk | white
    clouds | white
    salt | white
    coal | black
    crows | black
    charcoal | black
    tar | black
    blood | red
    strawberries | red
    ripe tomatoes | red
    cherries | red
    rubies | red
    carrots | orange
    oranges | orange
    pumpkins | orange
    tangerines | orange
    chocolate | brown
    coffee | brown
    soil | brown
    tree trunks | brown
    flamingos | pink
    eggplants | purple
    lavender | purple
    amethysts | purple
    """,
)

relation(
    "company_country", "country of origin of a company", "P17",
    [
        "[X] is a company from",
        "[X] is headquartered in the country of",
        "The company [X] comes from",
        "[X], a company based in",
        "Q: Which country is the company [X] from? A:",
        "The home country of [X] is",
        "[X] was founded in the country of",
    ],
    """
    Toyota | Japan
    Sony | Japan
    Honda | Japan
    Nintendo | Japan
    Canon | Japan
    Panasonic | Japan
    Nissan | Japan
    Samsung | South Korea
    Hyundai | South Korea
    LG | South Korea
    Nokia | Finland
    IKEA | Sweden
    Volvo | Sweden
    Spotify | Sweden
    Ericsson | Sweden
    Volkswagen | Germany
    BMW | Germany
    Siemens | Germany
    Adidas | Germany
    Porsche | Germany
    Audi | Germany
    Nestlé | Switzerland
    Rolex | Switzerland
    Ferrari | Italy
    Fiat | Italy
    Lamborghini | Italy
    Gucci | Italy
    Prada | Italy
    Renault | France
    Peugeot | France
    Chanel | France
    Michelin | France
    Zara | Spain
    Lego | Denmark
    Carlsberg | Denmark
    Alibaba | China
    Huawei | China
    Lenovo | China
    Tata | India
    Infosys | India
    """,
)

relation(
    "book_author", "author of a book", "P50",
    [
        "[X] was written by",
        "The author of [X] is",
        "[X] is a book by",
        "The writer who wrote [X] was",
        "[X], the famous work by",
        "Q: Who wrote [X]? A:",
        "Readers around the world know [X] as a classic by",
    ],
    """
    Hamlet | Shakespeare
    Romeo and Juliet | Shakespeare
    Macbeth | Shakespeare
    Pride and Prejudice | Austen
    Emma | Austen
    Nineteen Eighty-Four | Orwell
    Animal Farm | Orwell
    War and Peace | Tolstoy
    Anna Karenina | Tolstoy
    Don Quixote | Cervantes
    The Odyssey | Homer
    The Iliad | Homer
    Oliver Twist | Dickens
    A Christmas Carol | Dickens
    Great Expectations | Dickens
    The Adventures of Tom Sawyer | Twain
    Adventures of Huckleberry Finn | Twain
    Moby-Dick | Melville
    The Great Gatsby | Fitzgerald
    Frankenstein | Shelley
    Dracula | Stoker
    The Lord of the Rings | Tolkien
    The Hobbit | Tolkien
    Les Misérables | Hugo
    Crime and Punishment | Dostoevsky
    The Divine Comedy | Dante
    On the Origin of Species | Darwin
    A Brief History of Time | Hawking
    The Catcher in the Rye | Salinger
    To Kill a Mockingbird | Lee
    The Old Man and the Sea | Hemingway
    Jane Eyre | Brontë
    Gulliver's Travels | Swift
    Robinson Crusoe | Defoe
    Around the World in Eighty Days | Verne
    Twenty Thousand Leagues Under the Sea | Verne
    """,
)


# --------------------------------------------------------------------------------------------
# Checks, scoring, splitting
# --------------------------------------------------------------------------------------------

def fill(template: str, subject: str) -> str:
    """The prompt for one template and subject (the subject is inserted verbatim)."""
    return template.replace("[X]", subject)


def check_tables() -> None:
    """Fail loudly on a malformed table (run before anything is written)."""
    for rid, rel in RELATIONS.items():
        for template in rel["templates"]:
            if template.count("[X]") != 1:
                raise ValueError(f"{rid}: template {template!r} must contain exactly one [X]")
            if "[Y]" in template or template != template.strip():
                raise ValueError(f"{rid}: template {template!r} must end where the object goes, no [Y]")
        subjects = [s for s, _ in rel["facts"]]
        dupes = {s for s in subjects if subjects.count(s) > 1}
        if dupes:
            raise ValueError(f"{rid}: duplicate subjects {sorted(dupes)}")
        for subject, obj in rel["facts"]:
            if not subject or not obj:
                raise ValueError(f"{rid}: empty subject or object in {(subject, obj)}")
            for template in rel["templates"]:
                if subject not in fill(template, subject):
                    raise ValueError(f"{rid}: subject {subject!r} not verbatim in prompt")


def score_relation(model, prompts: list[str], candidates: list[str]):
    """Mean NLL of ``" " + candidate`` after each prompt: tensor [len(prompts), len(candidates)].

    The book's one scorer (:func:`editlens.scoring.score_candidates`), so the predictions stored
    with the paraphrase set are the numbers Chapters 1-2 compute."""
    import numpy as np
    import torch

    from editlens.scoring import score_candidates

    nll = score_candidates(model, prompts, [candidates] * len(prompts))
    return torch.from_numpy(np.stack(nll)).float()


BOS_USED: list[str] = []


def verify(relations: dict[str, dict], previous: dict | None = None) -> dict:
    """Score every (relation, subject, template) with the embedded model; return predictions.

    ``previous`` (an earlier json document): its predictions are reused for a relation whose
    templates and candidates are unchanged, so only new subjects are scored.
    """
    import torch

    import editlens

    torch.manual_seed(SEED)
    model, tokenizer = editlens.load_model(device="cpu")
    BOS_USED.append(tokenizer.bos_token)
    hf_model = model.original_model
    results: dict[str, dict] = {}
    for rid, rel in relations.items():
        t0 = time.time()
        candidates = sorted({o for _, o in rel["facts"]})
        old_preds: dict[str, list[str]] = {}
        if previous is not None and rid in previous["relations"]:
            old_rel = previous["relations"][rid]
            if old_rel["templates"] == rel["templates"] and old_rel["candidates"] == candidates:
                old_preds = previous["verification"]["predictions"].get(rid, {})
        facts = [(s, o) for s, o in rel["facts"] if s not in old_preds]
        results[rid] = {s: old_preds[s] for s, _ in rel["facts"] if s in old_preds}
        if facts:
            prompts = [fill(t, s) for s, _ in facts for t in rel["templates"]]
            nll = score_relation(model, prompts, candidates)
            pred = nll.argmin(-1).view(len(facts), len(rel["templates"]))
            for k, (s, _) in enumerate(facts):
                results[rid][s] = [candidates[i] for i in pred[k].tolist()]
        results[rid] = {s: results[rid][s] for s, _ in rel["facts"]}  # table order
        print(f"  {rid}: scored {len(facts)} of {len(rel['facts'])} subjects x {len(rel['templates'])} templates"
              f" x {len(candidates)} candidates in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return results


def metrics(predictions: dict[str, list[str]], gold: dict[str, str]) -> dict:
    """Accuracy over (subject, template) and pairwise consistency over template pairs."""
    correct = total = agree = pairs = 0
    all_right = all_wrong = 0
    for subject, preds in predictions.items():
        hits = [p == gold[subject] for p in preds]
        correct += sum(hits)
        total += len(preds)
        all_right += all(hits)
        all_wrong += not any(hits)
        for a, b in itertools.combinations(preds, 2):
            agree += a == b
            pairs += 1
    return {
        "subjects": len(predictions),
        "accuracy": round(correct / total, 4) if total else float("nan"),
        "consistency": round(agree / pairs, 4) if pairs else float("nan"),
        "pairs": pairs,
        "inconsistent_pairs": pairs - agree,
        "subjects_all_templates_right": all_right,
    }


# Relations authored and verified but left out of the set: after dropping the subjects the model
# does not know at all, fewer than MIN_SUBJECTS would remain.
MIN_SUBJECTS = 20
EXCLUDED = {
    "book_author": "after the drop rule only 11 of 36 subjects remain (< 20): the model rarely names the author",
}


def build(predictions: dict[str, dict[str, list[str]]], model_info: dict) -> dict:
    """Assemble the json document from the tables and the model's predictions."""
    all_relations = RELATIONS
    excluded_out = {}
    for rid, reason in EXCLUDED.items():
        rel = all_relations[rid]
        gold = dict(rel["facts"])
        entry = metrics(predictions[rid], gold)
        entry["known_subjects"] = sum(gold[s] in p for s, p in predictions[rid].items())
        excluded_out[rid] = {"name": rel["name"], "reason": reason, "verification_all_subjects": entry}
    relations_kept = {rid: rel for rid, rel in all_relations.items() if rid not in EXCLUDED}
    kept, dropped = [], []
    for rid, rel in relations_kept.items():
        for subject, obj in rel["facts"]:
            preds = predictions[rid][subject]
            if obj not in preds:
                dropped.append({"relation_id": rid, "subject": subject, "object": obj,
                                "reason": "wrong on every template", "predictions": preds})
            else:
                kept.append((rid, subject, obj))
    subj_split = assign_subject_splits([(rid, s) for rid, s, _ in kept], fractions=SUBJECT_FRACTIONS, seed=SEED)
    rel_split = assign_relation_splits(list(relations_kept), seed=SEED)
    relations_out = {}
    for rid, rel in relations_kept.items():
        relations_out[rid] = {
            "name": rel["name"],
            "wikidata": rel["wikidata"],
            "templates": rel["templates"],
            # all authored gold objects (dropped subjects' objects included: scoring used this set)
            "candidates": sorted({o for _, o in rel["facts"]}),
        }
    queries = [
        {"relation_id": rid, "subject": s, "object": o,
         "split_subjects": subj_split[s], "split_relations": rel_split[rid]}
        for rid, s, o in kept
    ]
    verification: dict = {"model": model_info, "per_relation": {}, "overall": {}}
    all_preds, all_gold = {}, {}
    for rid, rel in relations_kept.items():
        kept_subjects = {s for r, s, _ in kept if r == rid}
        preds = {s: p for s, p in predictions[rid].items() if s in kept_subjects}
        gold = {s: o for s, o in rel["facts"]}
        entry = metrics(preds, gold)
        entry["authored"] = len(rel["facts"])
        entry["dropped"] = len(rel["facts"]) - len(kept_subjects)
        verification["per_relation"][rid] = entry
        all_preds.update({(rid, s): p for s, p in preds.items()})
        all_gold.update({(rid, s): gold[s] for s in preds})
    verification["overall"] = metrics(all_preds, all_gold)
    verification["predictions"] = {
        rid: {s: p for s, p in predictions[rid].items()} for rid in all_relations
    }
    return {
        "name": "editlens paraphrase set (ParaRel style)",
        "version": 1,
        "license": "MIT",
        "generated_by": "scripts/author_paraphrases.py",
        "seed": SEED,
        "subject_fractions": SUBJECT_FRACTIONS,
        "relation_splits": {sp: sorted(r for r, v in rel_split.items() if v == sp)
                            for sp in ("train", "validation", "test")},
        "relations": relations_out,
        "queries": queries,
        "dropped": dropped,
        "excluded_relations": excluded_out,
        "verification": verification,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-model", action="store_true",
                        help="reuse the predictions stored in the existing json (tables unchanged)")
    parser.add_argument("--reuse", action="store_true",
                        help="score only subjects new since the existing json (same templates and candidates)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    check_tables()
    t0 = time.time()
    if args.no_model:
        old = json.loads(args.out.read_text())
        predictions = old["verification"]["predictions"]
        model_info = old["verification"]["model"]
        missing = [(r, s) for r, rel in RELATIONS.items() for s, _ in rel["facts"]
                   if s not in predictions.get(r, {})]
        if missing:
            raise SystemExit(f"--no-model: tables changed since the last verification ({missing[:3]}...); rerun with the model")
    else:
        previous = json.loads(args.out.read_text()) if args.reuse and args.out.is_file() else None
        predictions = verify(RELATIONS, previous)
        model_info = {"name": "SmolLM2-135M-Instruct (editlens embedded)", "dtype": "float32",
                      "bos": BOS_USED[0] if BOS_USED else None,
                      "scoring": "argmax over candidates of mean per-token NLL of ' ' + candidate, BOS-prefixed prompt",
                      "runtime_s": round(time.time() - t0)}
    doc = build(predictions, model_info)
    args.out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    ov = doc["verification"]["overall"]
    print(f"wrote {args.out}: {len(doc['queries'])} queries, {len(doc['dropped'])} dropped; "
          f"accuracy {ov['accuracy']:.3f}, consistency {ov['consistency']:.3f}")
    for rid, e in doc["verification"]["per_relation"].items():
        print(f"  {rid:17s} kept {e['subjects']:3d}/{e['authored']:3d}  acc {e['accuracy']:.3f}  cons {e['consistency']:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
