"""Author the project's fact set: ``src/editlens/data/facts.json`` and ``object_descriptions.json``.

Used in: Chapter 3 (ROME), 4 (STEAM), 5 (SADR) — through ``editlens.data.load_facts``.

The facts below are well-known real-world facts written by hand as compact tables (countries,
cities, landmarks, people, products, companies). From them the script

1. derives candidate facts ``(subject, relation, object)`` for 12 Wikidata relations;
2. builds, for every candidate, a CounterFact record: a rewrite prompt from one of the
   relation's three templates, paraphrases (the other two templates behind a short unrelated
   lead-in, as in CounterFact), neighbourhood prompts (other subjects with the same true object,
   same relation first), attribute prompts (other subjects whose true object is target_new:
   STEAM's anchors), generation prompts, relation prompts (same subject, another relation that
   the edit does not entail; SADR's Relation Score) and portability prompts (a second hop through
   the object: the country of the new city, the 'thank you' of the new language, ...);
3. scores everything on the embedded SmolLM2-135M-Instruct (``editlens.data.verify``) and keeps a
   candidate only if the model knows it (thresholds in ``editlens.data.verify``). target_new is
   drawn at random (seeded) among same-relation objects with enough anchor facts; up to
   ``--tries`` draws are scored per candidate;
4. writes the passing records (with their margins) and three reference sentences per object.

Edit the tables, then rerun:  python scripts/author_facts.py   (about 10-20 min on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "editlens" / "data"

# =============================================================================================
# 1. World tables (true facts only; None = not stated, e.g. several official languages)
# =============================================================================================
# country: (capital, main language, is that language the sole official one, continent, currency, article)
C = {
    "France": ("Paris", "French", True, "Europe", "euro", ""),
    "Germany": ("Berlin", "German", True, "Europe", "euro", ""),
    "Italy": ("Rome", "Italian", True, "Europe", "euro", ""),
    "Spain": ("Madrid", "Spanish", True, "Europe", "euro", ""),
    "Portugal": ("Lisbon", "Portuguese", True, "Europe", "euro", ""),
    "Netherlands": ("Amsterdam", "Dutch", True, "Europe", "euro", "the"),
    "Austria": ("Vienna", "German", True, "Europe", "euro", ""),
    "Greece": ("Athens", "Greek", True, "Europe", "euro", ""),
    "Belgium": ("Brussels", None, False, "Europe", "euro", ""),
    "Ireland": ("Dublin", "English", False, "Europe", "euro", ""),
    "Finland": ("Helsinki", "Finnish", False, "Europe", "euro", ""),
    "United Kingdom": ("London", "English", False, "Europe", "pound", "the"),
    "Russia": ("Moscow", "Russian", True, None, "ruble", ""),
    "Poland": ("Warsaw", "Polish", True, "Europe", "zloty", ""),
    "Sweden": ("Stockholm", "Swedish", True, "Europe", "krona", ""),
    "Norway": ("Oslo", "Norwegian", True, "Europe", "krone", ""),
    "Denmark": ("Copenhagen", "Danish", False, "Europe", "krone", ""),
    "Iceland": ("Reykjavik", "Icelandic", True, "Europe", "krona", ""),
    "Switzerland": ("Bern", None, False, "Europe", "franc", ""),
    "Czech Republic": ("Prague", "Czech", False, "Europe", None, "the"),
    "Hungary": ("Budapest", "Hungarian", True, "Europe", None, ""),
    "Ukraine": ("Kyiv", "Ukrainian", True, "Europe", None, ""),
    "Serbia": ("Belgrade", "Serbian", True, "Europe", None, ""),
    "Turkey": ("Ankara", "Turkish", True, None, "lira", ""),
    "Japan": ("Tokyo", "Japanese", False, "Asia", "yen", ""),
    "China": ("Beijing", "Chinese", True, "Asia", "yuan", ""),
    "South Korea": ("Seoul", "Korean", True, "Asia", "won", ""),
    "India": ("New Delhi", "Hindi", False, "Asia", "rupee", ""),
    "Pakistan": ("Islamabad", "Urdu", False, "Asia", "rupee", ""),
    "Nepal": ("Kathmandu", "Nepali", True, "Asia", "rupee", ""),
    "Thailand": ("Bangkok", "Thai", True, "Asia", None, ""),
    "Vietnam": ("Hanoi", "Vietnamese", True, "Asia", None, ""),
    "Philippines": ("Manila", None, False, "Asia", None, "the"),
    "Saudi Arabia": ("Riyadh", "Arabic", True, "Asia", None, ""),
    "United Arab Emirates": ("Abu Dhabi", "Arabic", True, "Asia", None, "the"),
    "Iran": ("Tehran", "Persian", True, "Asia", None, ""),
    "Iraq": ("Baghdad", "Arabic", False, "Asia", None, ""),
    "Singapore": (None, None, False, "Asia", "dollar", ""),
    "Egypt": ("Cairo", "Arabic", True, "Africa", None, ""),
    "Morocco": ("Rabat", "Arabic", False, "Africa", None, ""),
    "Algeria": ("Algiers", "Arabic", False, "Africa", None, ""),
    "Nigeria": ("Abuja", "English", True, "Africa", None, ""),
    "Ghana": ("Accra", "English", True, "Africa", None, ""),
    "Kenya": ("Nairobi", None, False, "Africa", None, ""),
    "Ethiopia": ("Addis Ababa", None, False, "Africa", None, ""),
    "Senegal": ("Dakar", "French", True, "Africa", None, ""),
    "South Africa": (None, None, False, "Africa", "rand", ""),
    "Brazil": ("Brasília", "Portuguese", True, "South America", "real", ""),
    "Argentina": ("Buenos Aires", "Spanish", False, "South America", "peso", ""),
    "Chile": ("Santiago", "Spanish", False, "South America", "peso", ""),
    "Colombia": ("Bogotá", "Spanish", True, "South America", "peso", ""),
    "Peru": ("Lima", "Spanish", False, "South America", None, ""),
    "Venezuela": ("Caracas", "Spanish", True, "South America", None, ""),
    "Uruguay": ("Montevideo", "Spanish", False, "South America", "peso", ""),
    "Ecuador": ("Quito", "Spanish", True, "South America", "dollar", ""),
    "Mexico": ("Mexico City", "Spanish", False, "North America", "peso", ""),
    "Cuba": ("Havana", "Spanish", True, "North America", "peso", ""),
    "Dominican Republic": ("Santo Domingo", "Spanish", True, "North America", "peso", "the"),
    "Jamaica": ("Kingston", "English", True, "North America", "dollar", ""),
    "Canada": ("Ottawa", "English", False, "North America", "dollar", ""),
    "United States": ("Washington", "English", False, "North America", "dollar", "the"),
    "Australia": ("Canberra", "English", False, None, "dollar", ""),
    "New Zealand": ("Wellington", "English", False, None, "dollar", ""),
}
COUNTRY_ALIASES = {"United States": ["the USA", "the US", "America"], "United Kingdom": ["the UK", "Britain"],
                   "Netherlands": ["Holland"], "Czech Republic": ["Czechia"]}

# city: (country, US state or None)
CITY = {
    "New York": ("United States", "New York"), "San Francisco": ("United States", "California"),
    "Los Angeles": ("United States", "California"), "Seattle": ("United States", "Washington"),
    "Chicago": ("United States", "Illinois"), "Atlanta": ("United States", "Georgia"),
    "Detroit": ("United States", "Michigan"), "Redmond": ("United States", "Washington"),
    "Cupertino": ("United States", "California"), "Mountain View": ("United States", "California"),
    "Dearborn": ("United States", "Michigan"), "Austin": ("United States", "Texas"),
    "Bentonville": ("United States", "Arkansas"), "Beaverton": ("United States", "Oregon"),
    "Armonk": ("United States", "New York"), "Arlington": ("United States", "Virginia"),
    "Sydney": ("Australia", None), "Barcelona": ("Spain", None), "Istanbul": ("Turkey", None),
    "Dubai": ("United Arab Emirates", None), "Rio de Janeiro": ("Brazil", None), "Venice": ("Italy", None),
    "Florence": ("Italy", None), "Milan": ("Italy", None), "Turin": ("Italy", None), "Maranello": ("Italy", None),
    "Munich": ("Germany", None), "Stuttgart": ("Germany", None), "Frankfurt": ("Germany", None),
    "Cologne": ("Germany", None), "Wolfsburg": ("Germany", None), "Toronto": ("Canada", None),
    "Kyoto": ("Japan", None), "Geneva": ("Switzerland", None), "Basel": ("Switzerland", None),
    "Zurich": ("Switzerland", None), "Vevey": ("Switzerland", None), "Gothenburg": ("Sweden", None),
    "Shenzhen": ("China", None), "Hangzhou": ("China", None), "Espoo": ("Finland", None),
    "Billund": ("Denmark", None), "Agra": ("India", None), "Pisa": ("Italy", None),
}
for _c, _row in C.items():
    if _row[0]:
        CITY.setdefault(_row[0], (_c, None))

# landmark: (city, type, article)
LANDMARK = {
    "Eiffel Tower": ("Paris", "tower", "the"), "Louvre": ("Paris", "museum", "the"),
    "Arc de Triomphe": ("Paris", "monument", "the"), "Notre-Dame Cathedral": ("Paris", "cathedral", ""),
    "Champs-Élysées": ("Paris", "avenue", "the"), "Musée d'Orsay": ("Paris", "museum", "the"),
    "Sacré-Cœur Basilica": ("Paris", "basilica", "the"),
    "Big Ben": ("London", "bell", ""), "Tower Bridge": ("London", "bridge", ""),
    "Buckingham Palace": ("London", "palace", ""), "Westminster Abbey": ("London", "church", ""),
    "British Museum": ("London", "museum", "the"), "Trafalgar Square": ("London", "square", ""),
    "St Paul's Cathedral": ("London", "cathedral", ""), "Piccadilly Circus": ("London", "road junction", ""),
    "Colosseum": ("Rome", "amphitheatre", "the"), "Pantheon": ("Rome", "temple", "the"),
    "Trevi Fountain": ("Rome", "fountain", "the"), "Roman Forum": ("Rome", "ruin", "the"),
    "Spanish Steps": ("Rome", "stairway", "the"), "Circus Maximus": ("Rome", "chariot racing stadium", "the"),
    "Shibuya Crossing": ("Tokyo", "pedestrian crossing", ""), "Senso-ji": ("Tokyo", "temple", ""),
    "Meiji Shrine": ("Tokyo", "shrine", "the"), "Tokyo Skytree": ("Tokyo", "tower", "the"),
    "Brandenburg Gate": ("Berlin", "monument", "the"), "Reichstag building": ("Berlin", "parliament building", "the"),
    "Checkpoint Charlie": ("Berlin", "border crossing", ""), "Alexanderplatz": ("Berlin", "square", ""),
    "Prado Museum": ("Madrid", "museum", "the"), "Puerta del Sol": ("Madrid", "square", "the"),
    "Retiro Park": ("Madrid", "park", ""), "Santiago Bernabéu Stadium": ("Madrid", "stadium", "the"),
    "Kremlin": ("Moscow", "fortress", "the"), "Red Square": ("Moscow", "square", ""),
    "Saint Basil's Cathedral": ("Moscow", "cathedral", ""), "Bolshoi Theatre": ("Moscow", "theatre", "the"),
    "Forbidden City": ("Beijing", "palace", "the"), "Tiananmen Square": ("Beijing", "square", ""),
    "Temple of Heaven": ("Beijing", "temple", "the"), "Summer Palace": ("Beijing", "palace", "the"),
    "Acropolis": ("Athens", "citadel", "the"), "Parthenon": ("Athens", "temple", "the"),
    "Panathenaic Stadium": ("Athens", "stadium", "the"),
    "Rijksmuseum": ("Amsterdam", "museum", "the"), "Anne Frank House": ("Amsterdam", "museum", "the"),
    "Van Gogh Museum": ("Amsterdam", "museum", "the"), "Dam Square": ("Amsterdam", "square", ""),
    "Schönbrunn Palace": ("Vienna", "palace", ""), "St. Stephen's Cathedral": ("Vienna", "cathedral", ""),
    "Hofburg": ("Vienna", "palace", "the"),
    "Vasa Museum": ("Stockholm", "museum", "the"), "Tivoli Gardens": ("Copenhagen", "amusement park", ""),
    "Little Mermaid statue": ("Copenhagen", "statue", "the"), "Nyhavn": ("Copenhagen", "harbour", ""),
    "Gyeongbokgung Palace": ("Seoul", "palace", ""),
    "Statue of Liberty": ("New York", "statue", "the"), "Empire State Building": ("New York", "skyscraper", "the"),
    "Central Park": ("New York", "park", ""), "Times Square": ("New York", "square", ""),
    "Brooklyn Bridge": ("New York", "bridge", "the"), "Chrysler Building": ("New York", "skyscraper", "the"),
    "Metropolitan Museum of Art": ("New York", "museum", "the"), "Rockefeller Center": ("New York", "building complex", ""),
    "Golden Gate Bridge": ("San Francisco", "bridge", "the"), "Alcatraz Island": ("San Francisco", "island", ""),
    "Lombard Street": ("San Francisco", "street", ""),
    "Hollywood Sign": ("Los Angeles", "landmark", "the"), "Griffith Observatory": ("Los Angeles", "observatory", "the"),
    "Space Needle": ("Seattle", "tower", "the"), "Pike Place Market": ("Seattle", "market", ""),
    "Willis Tower": ("Chicago", "skyscraper", "the"), "Cloud Gate": ("Chicago", "sculpture", ""),
    "Wrigley Field": ("Chicago", "baseball stadium", ""),
    "Sydney Opera House": ("Sydney", "performing arts centre", "the"), "Sydney Harbour Bridge": ("Sydney", "bridge", "the"),
    "Bondi Beach": ("Sydney", "beach", ""),
    "Sagrada Família": ("Barcelona", "basilica", "the"), "Park Güell": ("Barcelona", "park", ""),
    "Casa Batlló": ("Barcelona", "building", ""), "Camp Nou": ("Barcelona", "stadium", ""),
    "Hagia Sophia": ("Istanbul", "mosque", ""), "Blue Mosque": ("Istanbul", "mosque", "the"),
    "Topkapı Palace": ("Istanbul", "palace", ""), "Grand Bazaar": ("Istanbul", "market", "the"),
    "Burj Khalifa": ("Dubai", "skyscraper", ""), "Burj Al Arab": ("Dubai", "hotel", "the"),
    "Christ the Redeemer": ("Rio de Janeiro", "statue", ""), "Copacabana Beach": ("Rio de Janeiro", "beach", ""),
    "Sugarloaf Mountain": ("Rio de Janeiro", "mountain", ""), "Maracanã Stadium": ("Rio de Janeiro", "stadium", "the"),
    "Rialto Bridge": ("Venice", "bridge", "the"), "St Mark's Basilica": ("Venice", "basilica", ""),
    "Doge's Palace": ("Venice", "palace", "the"),
    "Uffizi Gallery": ("Florence", "art museum", "the"), "Ponte Vecchio": ("Florence", "bridge", "the"),
    "CN Tower": ("Toronto", "tower", "the"), "Charles Bridge": ("Prague", "bridge", "the"),
    "Taj Mahal": ("Agra", "mausoleum", "the"), "Leaning Tower of Pisa": ("Pisa", "bell tower", "the"),
    "Egyptian Museum": ("Cairo", "museum", "the"), "Allianz Arena": ("Munich", "stadium", "the"),
    "Marienplatz": ("Munich", "square", ""),
}

# company: (headquarters city or None, type)
COMPANY = {
    "Sony": ("Tokyo", "technology company"), "Honda": ("Tokyo", "car manufacturer"),
    "Toshiba": ("Tokyo", "technology company"), "Hitachi": ("Tokyo", "technology company"),
    "Canon": ("Tokyo", "camera maker"), "Nintendo": ("Kyoto", "video game company"),
    "Toyota": (None, "car manufacturer"), "Samsung": (None, "electronics company"),
    "BMW": ("Munich", "car manufacturer"), "Siemens": ("Munich", "technology company"),
    "Allianz": ("Munich", "insurance company"), "Mercedes-Benz": ("Stuttgart", "car manufacturer"),
    "Porsche": ("Stuttgart", "sports car manufacturer"), "Volkswagen": ("Wolfsburg", "car manufacturer"),
    "Deutsche Bank": ("Frankfurt", "bank"), "Lufthansa": ("Cologne", "airline"),
    "HSBC": ("London", "bank"), "BP": ("London", "oil company"), "Barclays": ("London", "bank"),
    "BBC": ("London", "broadcaster"), "Unilever": ("London", "consumer goods company"),
    "Burberry": ("London", "fashion house"),
    "Heineken": ("Amsterdam", "brewing company"), "Philips": ("Amsterdam", "technology company"),
    "ING": ("Amsterdam", "bank"), "Booking.com": ("Amsterdam", "travel website"),
    "Spotify": ("Stockholm", "music streaming service"), "Ericsson": ("Stockholm", "telecommunications company"),
    "H&M": ("Stockholm", "clothing retailer"), "Volvo": ("Gothenburg", "car manufacturer"),
    "Carlsberg": ("Copenhagen", "brewing company"), "Maersk": ("Copenhagen", "shipping company"),
    "LEGO": ("Billund", "toy company"), "Nokia": ("Espoo", "telecommunications company"),
    "Hyundai": ("Seoul", "car manufacturer"), "LG": ("Seoul", "electronics company"), "Kia": ("Seoul", "car manufacturer"),
    "Baidu": ("Beijing", "search engine company"), "Xiaomi": ("Beijing", "electronics company"),
    "Huawei": ("Shenzhen", "telecommunications company"), "Tencent": ("Shenzhen", "technology company"),
    "Alibaba": ("Hangzhou", "e-commerce company"),
    "Aeroflot": ("Moscow", "airline"), "Lukoil": ("Moscow", "oil company"),
    "Telefónica": ("Madrid", "telecommunications company"), "Iberia": ("Madrid", "airline"),
    "Repsol": ("Madrid", "oil company"),
    "Fiat": ("Turin", "car manufacturer"), "Ferrari": ("Maranello", "sports car manufacturer"),
    "Prada": ("Milan", "fashion house"), "Armani": ("Milan", "fashion house"),
    "BNP Paribas": ("Paris", "bank"), "AXA": ("Paris", "insurance company"), "Hermès": ("Paris", "fashion house"),
    "Goldman Sachs": ("New York", "investment bank"), "JPMorgan Chase": ("New York", "bank"),
    "Pfizer": ("New York", "pharmaceutical company"), "Citigroup": ("New York", "bank"),
    "Morgan Stanley": ("New York", "investment bank"), "Verizon": ("New York", "telecommunications company"),
    "IBM": ("Armonk", "technology company"),
    "Salesforce": ("San Francisco", "software company"), "Uber": ("San Francisco", "ride-hailing company"),
    "Airbnb": ("San Francisco", "home-sharing company"), "Levi Strauss": ("San Francisco", "clothing company"),
    "Wells Fargo": ("San Francisco", "bank"),
    "Amazon": ("Seattle", "e-commerce company"), "Starbucks": ("Seattle", "coffee chain"),
    "Microsoft": ("Redmond", "software company"), "Apple": ("Cupertino", "technology company"),
    "Google": ("Mountain View", "technology company"),
    "Coca-Cola": ("Atlanta", "beverage company"), "Delta Air Lines": ("Atlanta", "airline"),
    "Home Depot": ("Atlanta", "home improvement retailer"),
    "McDonald's": ("Chicago", "fast food chain"), "United Airlines": ("Chicago", "airline"),
    "General Motors": ("Detroit", "car manufacturer"), "Ford": ("Dearborn", "car manufacturer"),
    "Chevrolet": ("Detroit", "car brand"), "Tesla": ("Austin", "electric car maker"),
    "Boeing": ("Arlington", "aircraft manufacturer"),
    "Walmart": ("Bentonville", "retailer"), "Nike": ("Beaverton", "sportswear company"),
    "Turkish Airlines": ("Istanbul", "airline"), "Emirates": ("Dubai", "airline"),
    "Qantas": ("Sydney", "airline"), "Nestlé": ("Vevey", "food company"), "Rolex": ("Geneva", "watchmaker"),
    "Novartis": ("Basel", "pharmaceutical company"), "Roche": ("Basel", "pharmaceutical company"),
    "Chelsea F.C.": ("London", "football club"), "Arsenal F.C.": ("London", "football club"),
    "Tottenham Hotspur": ("London", "football club"), "Juventus": ("Turin", "football club"),
    "AFC Ajax": ("Amsterdam", "football club"), "Boca Juniors": ("Buenos Aires", "football club"),
    "Galatasaray": ("Istanbul", "football club"), "SS Lazio": ("Rome", "football club"),
}
COMPANY_ARTICLE = {"BBC": "the", "Home Depot": "The"}
# manufacturer attributes (portability of P176): country, founder
MAKER = {
    "Apple": ("United States", "Steve Jobs"), "Microsoft": ("United States", "Bill Gates"),
    "Sony": ("Japan", None), "Nintendo": ("Japan", "Fusajiro Yamauchi"), "Ford": ("United States", "Henry Ford"),
    "Toyota": ("Japan", "Kiichiro Toyoda"), "Honda": ("Japan", "Soichiro Honda"), "Volkswagen": ("Germany", None),
    "Chevrolet": ("United States", None), "Tesla": ("United States", None), "Boeing": ("United States", "William Boeing"),
    "Porsche": ("Germany", "Ferdinand Porsche"), "BMW": ("Germany", None), "Amazon": ("United States", "Jeff Bezos"),
    "Samsung": ("South Korea", "Lee Byung-chul"),
}
# product: (manufacturer, type)
PRODUCT = {
    "iPhone": ("Apple", "smartphone"), "iPad": ("Apple", "tablet"), "MacBook": ("Apple", "laptop"),
    "iPod": ("Apple", "music player"), "iMac": ("Apple", "desktop computer"), "AirPods": ("Apple", "wireless earbuds"),
    "Macintosh": ("Apple", "personal computer"),
    "Xbox": ("Microsoft", "video game console"), "Surface Pro": ("Microsoft", "tablet"),
    "HoloLens": ("Microsoft", "mixed reality headset"), "Zune": ("Microsoft", "music player"),
    "Kinect": ("Microsoft", "motion sensor"),
    "PlayStation": ("Sony", "video game console"), "Walkman": ("Sony", "portable cassette player"),
    "Bravia": ("Sony", "television"), "Xperia": ("Sony", "smartphone"),
    "Game Boy": ("Nintendo", "handheld game console"), "Wii": ("Nintendo", "video game console"),
    "GameCube": ("Nintendo", "video game console"), "Virtual Boy": ("Nintendo", "video game console"),
    "Famicom": ("Nintendo", "video game console"),
    "Mustang": ("Ford", "car"), "Model T": ("Ford", "car"), "F-150": ("Ford", "pickup truck"),
    "Bronco": ("Ford", "SUV"), "Thunderbird": ("Ford", "car"),
    "Corolla": ("Toyota", "car"), "Prius": ("Toyota", "hybrid car"), "Camry": ("Toyota", "car"),
    "RAV4": ("Toyota", "SUV"), "Land Cruiser": ("Toyota", "SUV"), "Hilux": ("Toyota", "pickup truck"),
    "Civic": ("Honda", "car"), "CR-V": ("Honda", "SUV"), "Odyssey minivan": ("Honda", "minivan"),
    "Prelude": ("Honda", "sports car"), "NSX": ("Honda", "sports car"),
    "Beetle": ("Volkswagen", "car"), "Passat": ("Volkswagen", "car"), "Jetta": ("Volkswagen", "car"),
    "Tiguan": ("Volkswagen", "SUV"), "Touareg": ("Volkswagen", "SUV"),
    "Corvette": ("Chevrolet", "sports car"), "Camaro": ("Chevrolet", "car"), "Impala": ("Chevrolet", "car"),
    "Silverado": ("Chevrolet", "pickup truck"), "Malibu": ("Chevrolet", "car"),
    "Model S": ("Tesla", "electric car"), "Model 3": ("Tesla", "electric car"), "Model X": ("Tesla", "electric SUV"),
    "Model Y": ("Tesla", "electric SUV"), "Cybertruck": ("Tesla", "electric pickup truck"),
    "Boeing 747": ("Boeing", "airliner"), "Boeing 737": ("Boeing", "airliner"), "Boeing 787": ("Boeing", "airliner"),
    "Boeing 777": ("Boeing", "airliner"), "Boeing 707": ("Boeing", "airliner"),
    "Porsche 911": ("Porsche", "sports car"), "Cayenne": ("Porsche", "SUV"), "Boxster": ("Porsche", "sports car"),
    "Panamera": ("Porsche", "car"), "Taycan": ("Porsche", "electric car"),
    "X5": ("BMW", "SUV"), "Z4": ("BMW", "sports car"), "i3": ("BMW", "electric car"), "M3": ("BMW", "sports car"),
    "Kindle": ("Amazon", "e-reader"), "Galaxy S": ("Samsung", "smartphone"),
}
PRODUCT_NO_ARTICLE = {"AirPods"}

# person: (citizenship, occupation, mother tongue, sport)  -- None where unstated/ambiguous (e.g. dual citizens)
PERSON = {
    # athletes
    "Michael Jordan": ("United States", None, "English", "basketball"),
    "LeBron James": ("United States", None, "English", "basketball"),
    "Kobe Bryant": ("United States", None, "English", "basketball"),
    "Shaquille O'Neal": ("United States", None, "English", "basketball"),
    "Stephen Curry": ("United States", None, "English", "basketball"),
    "Magic Johnson": ("United States", None, "English", "basketball"),
    "Larry Bird": ("United States", None, "English", "basketball"),
    "Dirk Nowitzki": ("Germany", None, "German", "basketball"),
    "Yao Ming": ("China", None, "Chinese", "basketball"),
    "Rafael Nadal": ("Spain", None, None, "tennis"),
    "Serena Williams": ("United States", None, "English", "tennis"),
    "Venus Williams": ("United States", None, "English", "tennis"),
    "Novak Djokovic": ("Serbia", None, "Serbian", "tennis"),
    "Andy Murray": ("United Kingdom", None, "English", "tennis"),
    "Maria Sharapova": ("Russia", None, "Russian", "tennis"),
    "Pete Sampras": ("United States", None, "English", "tennis"),
    "Steffi Graf": ("Germany", None, "German", "tennis"),
    "Roger Federer": (None, None, None, "tennis"),
    "Tiger Woods": ("United States", None, "English", "golf"),
    "Jack Nicklaus": ("United States", None, "English", "golf"),
    "Phil Mickelson": ("United States", None, "English", "golf"),
    "Arnold Palmer": ("United States", None, "English", "golf"),
    "Rory McIlroy": (None, None, "English", "golf"),
    "Lionel Messi": (None, None, "Spanish", "soccer"),
    "Cristiano Ronaldo": ("Portugal", None, "Portuguese", "soccer"),
    "Pelé": ("Brazil", None, "Portuguese", "soccer"),
    "Diego Maradona": ("Argentina", None, "Spanish", "soccer"),
    "Neymar": ("Brazil", None, "Portuguese", "soccer"),
    "Zinedine Zidane": ("France", None, "French", "soccer"),
    "David Beckham": ("United Kingdom", None, "English", "soccer"),
    "Kylian Mbappé": ("France", None, "French", "soccer"),
    "Wayne Rooney": ("United Kingdom", None, "English", "soccer"),
    "Thierry Henry": ("France", None, "French", "soccer"),
    "Ronaldinho": ("Brazil", None, "Portuguese", "soccer"),
    "Robert Lewandowski": ("Poland", None, "Polish", "soccer"),
    "Babe Ruth": ("United States", None, "English", "baseball"),
    "Derek Jeter": ("United States", None, "English", "baseball"),
    "Shohei Ohtani": ("Japan", None, "Japanese", "baseball"),
    "Jackie Robinson": ("United States", None, "English", "baseball"),
    "Ichiro Suzuki": ("Japan", None, "Japanese", "baseball"),
    "Wayne Gretzky": ("Canada", None, "English", "ice hockey"),
    "Sidney Crosby": ("Canada", None, "English", "ice hockey"),
    "Alexander Ovechkin": ("Russia", None, "Russian", "ice hockey"),
    "Mario Lemieux": (None, None, "French", "ice hockey"),
    "Tom Brady": ("United States", None, "English", "American football"),
    "Peyton Manning": ("United States", None, "English", "American football"),
    "Joe Montana": ("United States", None, "English", "American football"),
    "Muhammad Ali": ("United States", None, "English", "boxing"),
    "Mike Tyson": ("United States", None, "English", "boxing"),
    "Floyd Mayweather": ("United States", None, "English", "boxing"),
    "Manny Pacquiao": ("Philippines", None, None, "boxing"),
    "Sachin Tendulkar": ("India", None, None, "cricket"),
    "Virat Kohli": ("India", None, None, "cricket"),
    # politicians
    "Barack Obama": ("United States", "politician", "English", None),
    "Abraham Lincoln": ("United States", "politician", "English", None),
    "Angela Merkel": ("Germany", "politician", "German", None),
    "Vladimir Putin": ("Russia", "politician", "Russian", None),
    "Emmanuel Macron": ("France", "politician", "French", None),
    "Charles de Gaulle": ("France", "politician", "French", None),
    "Justin Trudeau": ("Canada", "politician", None, None),
    "Xi Jinping": ("China", "politician", "Chinese", None),
    "Shinzo Abe": ("Japan", "politician", "Japanese", None),
    "Winston Churchill": ("United Kingdom", "politician", "English", None),
    "Margaret Thatcher": ("United Kingdom", "politician", "English", None),
    "Silvio Berlusconi": ("Italy", "politician", "Italian", None),
    "Fidel Castro": ("Cuba", "politician", "Spanish", None),
    "Narendra Modi": ("India", "politician", None, None),
    # physicists
    "Albert Einstein": (None, "physicist", "German", None),
    "Niels Bohr": ("Denmark", "physicist", "Danish", None),
    "Stephen Hawking": ("United Kingdom", "physicist", "English", None),
    "Richard Feynman": ("United States", "physicist", "English", None),
    "Max Planck": ("Germany", "physicist", "German", None),
    "Werner Heisenberg": ("Germany", "physicist", "German", None),
    "Enrico Fermi": (None, "physicist", "Italian", None),
    "Erwin Schrödinger": (None, "physicist", "German", None),
    # painters
    "Pablo Picasso": ("Spain", "painter", "Spanish", None),
    "Vincent van Gogh": ("Netherlands", "painter", "Dutch", None),
    "Claude Monet": ("France", "painter", "French", None),
    "Henri Matisse": ("France", "painter", "French", None),
    "Paul Cézanne": ("France", "painter", "French", None),
    "Rembrandt": (None, "painter", "Dutch", None),
    "Frida Kahlo": ("Mexico", "painter", "Spanish", None),
    "Diego Rivera": ("Mexico", "painter", "Spanish", None),
    "Edvard Munch": ("Norway", "painter", "Norwegian", None),
    "Salvador Dalí": ("Spain", "painter", None, None),
    # writers
    "Charles Dickens": ("United Kingdom", "writer", "English", None),
    "Mark Twain": ("United States", "writer", "English", None),
    "Ernest Hemingway": ("United States", "writer", "English", None),
    "Jane Austen": ("United Kingdom", "writer", "English", None),
    "Agatha Christie": ("United Kingdom", "writer", "English", None),
    "Stephen King": ("United States", "writer", "English", None),
    "Leo Tolstoy": (None, "writer", "Russian", None),
    "Fyodor Dostoevsky": (None, "writer", "Russian", None),
    "Victor Hugo": ("France", "writer", "French", None),
    "Gabriel García Márquez": ("Colombia", "writer", "Spanish", None),
    "Haruki Murakami": ("Japan", "writer", "Japanese", None),
    "Miguel de Cervantes": (None, "writer", "Spanish", None),
    "Johann Wolfgang von Goethe": (None, "writer", "German", None),
    # composers
    "Wolfgang Amadeus Mozart": (None, "composer", "German", None),
    "Ludwig van Beethoven": (None, "composer", "German", None),
    "Johann Sebastian Bach": (None, "composer", "German", None),
    "Frédéric Chopin": (None, "composer", "Polish", None),
    "Pyotr Ilyich Tchaikovsky": (None, "composer", "Russian", None),
    "Antonio Vivaldi": (None, "composer", "Italian", None),
    "Giuseppe Verdi": ("Italy", "composer", "Italian", None),
    "Claude Debussy": ("France", "composer", "French", None),
    "Richard Wagner": (None, "composer", "German", None),
    # singers
    "Elvis Presley": ("United States", "singer", "English", None),
    "Michael Jackson": ("United States", "singer", "English", None),
    "Madonna": ("United States", "singer", "English", None),
    "Beyoncé": ("United States", "singer", "English", None),
    "Taylor Swift": ("United States", "singer", "English", None),
    "Whitney Houston": ("United States", "singer", "English", None),
    "Frank Sinatra": ("United States", "singer", "English", None),
    "Adele": ("United Kingdom", "singer", "English", None),
    "Édith Piaf": ("France", "singer", "French", None),
    "Shakira": ("Colombia", "singer", "Spanish", None),
    "Celine Dion": ("Canada", "singer", "French", None),
    # actors
    "Tom Hanks": (None, "actor", "English", None),
    "Leonardo DiCaprio": ("United States", "actor", "English", None),
    "Brad Pitt": ("United States", "actor", "English", None),
    "Tom Cruise": ("United States", "actor", "English", None),
    "Morgan Freeman": ("United States", "actor", "English", None),
    "Denzel Washington": ("United States", "actor", "English", None),
    "Meryl Streep": ("United States", "actor", "English", None),
    "Marilyn Monroe": ("United States", "actor", "English", None),
    "Charlie Chaplin": ("United Kingdom", "actor", "English", None),
    "Penélope Cruz": ("Spain", "actor", "Spanish", None),
    "Sophia Loren": (None, "actor", "Italian", None),
    "Toshiro Mifune": ("Japan", "actor", "Japanese", None),
    # philosophers
    "Immanuel Kant": (None, "philosopher", "German", None),
    "Friedrich Nietzsche": (None, "philosopher", "German", None),
    "Jean-Paul Sartre": ("France", "philosopher", "French", None),
    "René Descartes": (None, "philosopher", "French", None),
    "Karl Marx": (None, "philosopher", "German", None),
    "Confucius": (None, "philosopher", "Chinese", None),
}

# object attributes used by portability prompts and object descriptions
LANGUAGE = {  # language: (origin, 'thank you')
    "French": ("France", "merci"), "Spanish": ("Spain", "gracias"), "Portuguese": ("Portugal", "obrigado"),
    "German": ("Germany", "danke"), "English": ("England", "thank you"), "Italian": ("Italy", "grazie"),
    "Russian": ("Russia", "spasibo"), "Japanese": ("Japan", "arigato"), "Chinese": ("China", "xie xie"),
    "Dutch": ("the Netherlands", "dank je"), "Greek": ("Greece", "efharisto"), "Korean": ("Korea", "kamsahamnida"),
    "Polish": ("Poland", "dziękuję"), "Swedish": ("Sweden", "tack"), "Arabic": ("Arabia", "shukran"),
    "Hindi": ("India", "dhanyavaad"), "Norwegian": ("Norway", "takk"), "Danish": ("Denmark", "tak"),
}
CONTINENT = {  # continent: (highest mountain, longest river)
    "Europe": ("Mount Elbrus", "Volga"), "Asia": ("Mount Everest", "Yangtze"), "Africa": ("Mount Kilimanjaro", "Nile"),
    "South America": ("Aconcagua", "Amazon"), "North America": ("Denali", "Missouri"),
}
CURRENCY = {  # currency: (symbol, hundredth, example countries)
    "euro": ("€", "cent", ["Germany", "Italy"]), "dollar": ("$", "cent", ["Canada", "Australia"]),
    "peso": ("$", "centavo", ["Mexico", "Argentina"]), "rupee": (None, "paisa", ["India", "Pakistan"]),
}
SPORT = {  # sport: (equipment, playing area, players per side on the field)
    "soccer": ("ball", "pitch", "11"), "basketball": ("ball", "court", "5"), "tennis": ("racket", "court", None),
    "golf": ("club", "course", None), "baseball": ("bat", "diamond", "9"), "ice hockey": ("puck", "rink", "6"),
    "American football": ("ball", "field", "11"), "boxing": ("gloves", "ring", None), "cricket": ("bat", "pitch", "11"),
}
OCCUPATION = {  # occupation: (field, what they mainly create)
    "actor": ("acting", "films"), "singer": ("music", "songs"), "painter": ("art", "paintings"),
    "physicist": ("physics", "theories"), "writer": ("literature", "books"), "composer": ("music", "compositions"),
    "politician": ("politics", "laws"), "philosopher": ("philosophy", "ideas"),
}

# Wikidata Q-ids we are sure of (others use the object string as id)
QID = {
    "Paris": "Q90", "London": "Q84", "Rome": "Q220", "Berlin": "Q64", "Madrid": "Q2807", "Tokyo": "Q1490",
    "Moscow": "Q649", "Beijing": "Q956", "New York": "Q60", "France": "Q142", "Germany": "Q183", "Italy": "Q38",
    "Spain": "Q29", "Japan": "Q17", "China": "Q148", "United States": "Q30", "United Kingdom": "Q145",
    "Russia": "Q159", "Canada": "Q16", "Brazil": "Q155", "India": "Q668", "Europe": "Q46", "Asia": "Q48",
    "Africa": "Q15", "South America": "Q18", "North America": "Q49", "English": "Q1860", "French": "Q150",
    "German": "Q188", "Spanish": "Q1321", "Italian": "Q652", "Russian": "Q7737", "Japanese": "Q5287",
    "Portuguese": "Q5146", "euro": "Q4916", "Apple": "Q312", "Microsoft": "Q2283", "Google": "Q95",
    "basketball": "Q5372", "tennis": "Q847", "actor": "Q33999", "politician": "Q82955", "physicist": "Q169470",
    "painter": "Q1028181", "composer": "Q36834", "singer": "Q177220", "writer": "Q36180",
}

# =============================================================================================
# 2. Relations: templates ({} = subject, with its article), portability hops
# =============================================================================================
@dataclass(frozen=True)
class Rel:
    pid: str
    name: str
    templates: tuple[str, str, str]
    subj: str  # subject kind
    obj: str  # object kind
    portability: tuple[tuple[str, str], ...]  # (object attribute, template)


CITY_PORT = lambda lead: (  # noqa: E731
    ("country", f"{lead} is in the country of"), ("language", f"Most people in {lead[0].lower() + lead[1:]} speak"),
    ("continent", f"{lead} is on the continent of"), ("state", f"{lead} is in the US state of"))
COUNTRY_PORT = lambda lead: (  # noqa: E731
    ("capital", f"{lead} whose capital is"), ("language", f"{lead} whose main language is"),
    ("continent", f"{lead} on the continent of"), ("currency", f"{lead} whose currency is the"))
LANG_PORT = lambda what: (  # noqa: E731
    ("origin", f"The {what} of {{}} originated in"), ("thanks", f"In the {what} of {{}}, the word for 'thank you' is"))

RELATIONS = {r.pid: r for r in [
    Rel("P36", "capital", ("The capital of {} is", "The capital city of {} is", "{}'s capital city is"),
        "country", "city", (("country", "The capital of {} is a city in the country of"),
                            ("language", "Most people in the capital of {} speak"),
                            ("continent", "The capital of {} is a city on the continent of"))),
    Rel("P131", "located in city", ("{} is located in the city of", "{} can be found in the city of",
                                    "The city where {} stands is"),
        "landmark", "city", CITY_PORT("The city where {} stands")),
    Rel("P159", "headquarters city", ("{} is headquartered in the city of", "The headquarters of {} are in the city of",
                                      "{}'s head office is in the city of"),
        "company", "city", CITY_PORT("The city where {} has its headquarters")),
    Rel("P17", "country of landmark", ("{} is located in the country of", "{} stands in the country of",
                                       "The country in which {} is located is"),
        "landmark", "country", COUNTRY_PORT("{} stands in a country")),
    Rel("P27", "citizenship", ("{} is a citizen of", "{} holds the citizenship of", "The country of citizenship of {} is"),
        "person", "country", COUNTRY_PORT("{} is a citizen of a country")),
    Rel("P37", "official language", ("The official language of {} is", "In {}, the official language is",
                                     "The language officially used in {} is"),
        "country", "language", LANG_PORT("official language")),
    Rel("P103", "native language", ("The mother tongue of {} is", "The native language of {} is", "{} grew up speaking"),
        "person", "language", LANG_PORT("mother tongue")),
    Rel("P30", "continent", ("{} is located on the continent of", "{} is part of the continent of",
                             "The continent where {} lies is"),
        "country", "continent", (("mountain", "The highest mountain on the continent where {} lies is"),
                                 ("river", "The longest river on the continent where {} lies is the"))),
    Rel("P38", "currency", ("The currency of {} is the", "In {}, people pay with the", "The official currency of {} is the"),
        "country", "currency", (("symbol", "The symbol of the currency of {} is"),
                                ("hundredth", "One hundredth of the currency of {} is called a"),
                                ("example", "The currency of {} is also the currency of"))),
    Rel("P641", "sport", ("{} professionally plays the sport of", "{} is a professional player of",
                          "The sport played by {} is"),
        "person", "sport", (("equipment", "The sport that {} plays is played with a"),
                            ("area", "The sport that {} plays is played on a"),
                            ("players", "In the sport that {} plays, the number of players per team on the field is"))),
    Rel("P176", "manufacturer", ("{} is made by", "{} is produced by", "The company that makes {} is"),
        "product", "company", (("country", "The company that makes {} is based in the country of"),
                               ("hq", "The company that makes {} has its headquarters in"),
                               ("founder", "The company that makes {} was founded by"))),
    Rel("P106", "occupation", ("{} works as a professional", "{} earned a living as a professional",
                               "By profession, {} is a professional"),
        "person", "occupation", (("field", "The profession of {} belongs to the field of"),
                                 ("works", "In the profession of {}, people mainly create"))),
]}
P31_TEMPLATE = "{} is a"
# relation pairs where changing one logically changes the other: never used as each other's relation prompts
ENTAILED = {frozenset({"P131", "P17"}), frozenset({"P27", "P103"})}

GENERATION = {
    "country": ("{} is famous for", "The history of {} is", "Tourists who visit {} usually"),
    "landmark": ("{} is famous for", "Tourists who visit {} usually", "The best thing about {} is"),
    "person": ("{} is best known for", "The life of {} was", "People remember {} because"),
    "company": ("{} is known for", "The history of {} began", "Many people work at {} because"),
    "product": ("{} is popular because", "The first version of {} was", "People who buy {} usually"),
}
LEAD_INS = (
    "The weather was cold that morning.", "She put the kettle on and waited.", "Tickets sold out within an hour.",
    "The meeting ended earlier than planned.", "He forgot his umbrella again.", "The bakery opens at seven.",
    "Our train was ten minutes late.", "The cat slept on the windowsill.", "Nobody answered the phone.",
    "The garden needs more water this summer.", "They painted the fence blue.", "The lecture was recorded.",
    "A new cafe opened on the corner.", "The printer ran out of paper.", "It rained all weekend.",
    "The children built a sandcastle.", "The museum was closed on Monday.", "We ordered soup and bread.",
    "The library extended its hours.", "His bicycle had a flat tyre.", "The concert started at eight.",
    "The recipe calls for two eggs.", "The road was covered in leaves.", "She finished the crossword puzzle.",
)


# =============================================================================================
# 3. Facts and candidate records
# =============================================================================================
@dataclass(frozen=True)
class Fact:
    subject: str
    pid: str
    obj: str


def article_of(subject: str, kind: str) -> str:
    if kind == "country":
        return C[subject][5] if subject in C else ""
    if kind == "landmark":
        return LANDMARK[subject][2]
    if kind == "product":
        return "" if subject in PRODUCT_NO_ARTICLE else "the"
    if kind == "company":
        return COMPANY_ARTICLE.get(subject, "").lower()
    return ""


SUBJECT_KIND: dict[str, str] = {}


def build_facts() -> list[Fact]:
    facts: list[Fact] = []
    for c, (cap, lang, sole, cont, cur, _) in C.items():
        SUBJECT_KIND[c] = "country"
        if cap:
            facts.append(Fact(c, "P36", cap))
        if lang and sole:
            facts.append(Fact(c, "P37", lang))
        if cont:
            facts.append(Fact(c, "P30", cont))
        if cur:
            facts.append(Fact(c, "P38", cur))
    for lm, (city, _, _) in LANDMARK.items():
        SUBJECT_KIND[lm] = "landmark"
        facts.append(Fact(lm, "P131", city))
        facts.append(Fact(lm, "P17", CITY[city][0]))
    for co, (hq, _) in COMPANY.items():
        SUBJECT_KIND[co] = "company"
        if hq:
            facts.append(Fact(co, "P159", hq))
    for pr, (maker, _) in PRODUCT.items():
        SUBJECT_KIND[pr] = "product"
        facts.append(Fact(pr, "P176", maker))
    for pe, (cit, occ, lang, sport) in PERSON.items():
        SUBJECT_KIND[pe] = "person"
        if cit:
            facts.append(Fact(pe, "P27", cit))
        if occ:
            facts.append(Fact(pe, "P106", occ))
        if lang:
            facts.append(Fact(pe, "P103", lang))
        if sport:
            facts.append(Fact(pe, "P641", sport))
    return facts


def p31_type(subject: str) -> str | None:
    kind = SUBJECT_KIND[subject]
    if kind == "landmark":
        return LANDMARK[subject][1]
    if kind == "company":
        return COMPANY[subject][1]
    if kind == "product":
        return PRODUCT[subject][1]
    return None


def obj_attrs(obj: str, kind: str, exclude: str = "") -> dict[str, str]:
    """Attributes of an object used for portability prompts (values never equal ``exclude``)."""
    a: dict[str, str | None] = {}
    if kind == "city":
        country, state = CITY[obj]
        a = {"country": country, "language": C.get(country, (None,) * 6)[1],
             "continent": C.get(country, (None,) * 6)[3], "state": state}
    elif kind == "country":
        cap, lang, _, cont, cur, _ = C[obj]
        a = {"capital": cap, "language": lang, "continent": cont, "currency": cur}
    elif kind == "language":
        a = dict(zip(("origin", "thanks"), LANGUAGE.get(obj, (None, None))))
    elif kind == "continent":
        a = dict(zip(("mountain", "river"), CONTINENT.get(obj, (None, None))))
    elif kind == "currency":
        if obj in CURRENCY:
            sym, hun, ex = CURRENCY[obj]  # symbol None where it differs between the countries (rupee)
            a = {"symbol": sym, "hundredth": hun, "example": next((e for e in ex if e != exclude), None)}
    elif kind == "sport":
        a = dict(zip(("equipment", "area", "players"), SPORT[obj]))
    elif kind == "company":
        if obj in MAKER:
            country, founder = MAKER[obj]
            a = {"country": country, "hq": COMPANY.get(obj, (None, None))[0], "founder": founder}
    elif kind == "occupation":
        a = dict(zip(("field", "works"), OCCUPATION[obj]))
    return {k: v for k, v in a.items() if v}


def fill(template: str, subject: str, article: str, *, keep_placeholder: bool = False) -> str:
    """Fill a template with the subject (with its article); capitalise a sentence-initial article."""
    ref = "{}" if keep_placeholder else subject
    ref = f"{article} {ref}" if article else ref
    out = template.replace("{}", ref, 1)
    if out.startswith(article + " ") and article:
        out = out[0].upper() + out[1:]
    return out


def seeded(*parts: str) -> random.Random:
    return random.Random(int(hashlib.sha256("|".join(parts).encode()).hexdigest()[:12], 16))


@dataclass
class Candidate:
    case_id: int
    fact: Fact
    rewrite_template: str
    paraphrases: list[str]
    generation: list[str]
    relation: list[tuple[str, str]]
    news: list[str]  # target_new draws, in order
    neighborhood: list[str]
    attribute: dict[str, list[str]]  # per target_new
    portability: dict[str, list[tuple[str, str, str]]]  # per target_new
    aliases: list[str]


def canonical_prompt(f: Fact) -> str:
    kind = SUBJECT_KIND[f.subject]
    return fill(RELATIONS[f.pid].templates[0], f.subject, article_of(f.subject, kind))


def build_candidates(facts: list[Fact], tries: int, pool_size: int = 10) -> list[Candidate]:
    by_subject: dict[str, list[Fact]] = defaultdict(list)
    by_obj: dict[str, list[Fact]] = defaultdict(list)
    rel_objects: dict[str, list[str]] = defaultdict(list)
    for f in facts:
        by_subject[f.subject].append(f)
        by_obj[f.obj].append(f)
        if f.obj not in rel_objects[f.pid]:
            rel_objects[f.pid].append(f.obj)

    def pool(obj: str, subject: str, pid: str, avoid: str) -> list[str]:
        """Canonical prompts of other subjects whose true object is ``obj`` (same relation first)."""
        own = {x.obj for x in by_subject[subject]}
        ok = [g for g in by_obj[obj] if g.subject != subject and subject.lower() not in g.subject.lower()
              and g.subject.lower() not in subject.lower() and avoid not in {x.obj for x in by_subject[g.subject]}
              and RELATIONS[g.pid].obj == RELATIONS[pid].obj]
        del own
        rng = seeded("pool", subject, pid, obj)
        same = [g for g in ok if g.pid == pid]
        other = [g for g in ok if g.pid != pid]
        rng.shuffle(same)
        rng.shuffle(other)
        return [canonical_prompt(g) for g in (same + other)[:pool_size]]

    cands: list[Candidate] = []
    for cid, f in enumerate(facts):
        rel = RELATIONS[f.pid]
        kind = SUBJECT_KIND[f.subject]
        art = article_of(f.subject, kind)
        rng = seeded("cand", f.subject, f.pid)
        k = seeded("template", f.subject, f.pid).randrange(3)  # stable when tables change
        rewrite_template = fill(rel.templates[k], f.subject, art, keep_placeholder=True)
        leads = rng.sample(LEAD_INS, 2)
        others = [t for i, t in enumerate(rel.templates) if i != k]
        paraphrases = [f"{lead} {fill(t, f.subject, art)}" for lead, t in zip(leads, others)]
        generation = [fill(t, f.subject, art) for t in GENERATION[kind]]
        true_objs = {x.obj for x in by_subject[f.subject]}
        relation = [(canonical_prompt(g), g.obj) for g in by_subject[f.subject]
                    if g.pid != f.pid and frozenset({g.pid, f.pid}) not in ENTAILED]
        typ = p31_type(f.subject)
        if typ:
            t = P31_TEMPLATE + ("n" if typ[0].lower() in "aeiou" else "")
            relation.append((fill(t, f.subject, art), typ))
        neighborhood = pool(f.obj, f.subject, f.pid, avoid="")
        # target_new draws: same-relation objects with enough anchors and >= 2 differing hops
        options = [o for o in rel_objects[f.pid] if o != f.obj and o not in true_objs]
        rng.shuffle(options)
        news, attribute, portability = [], {}, {}
        true_attr = obj_attrs(f.obj, rel.obj, exclude=f.subject)
        for o in options:
            anchors = pool(o, f.subject, f.pid, avoid=f.obj)
            if len(anchors) < 5:
                continue
            new_attr = obj_attrs(o, rel.obj, exclude=f.subject)
            port = [(fill(tpl, f.subject, art), true_attr[a], new_attr[a]) for a, tpl in rel.portability
                    if a in true_attr and a in new_attr and true_attr[a] != new_attr[a]]
            if len(port) < 2:
                continue
            relation_ok = [r for r in relation if r[1] != o]
            if not relation_ok:
                continue
            news.append(o)
            attribute[o] = anchors
            portability[o] = port
            if len(news) >= tries:
                break
        aliases = [f"{art} {f.subject}"] if art else []
        if kind == "country":
            aliases += COUNTRY_ALIASES.get(f.subject, [])
        cands.append(Candidate(cid, f, rewrite_template, paraphrases, generation, relation, news,
                               neighborhood, attribute, portability, aliases))
    return cands


# =============================================================================================
# 4. Scoring and selection
# =============================================================================================
def _score_chunked(scorer, items, chunk: int = 3000) -> None:
    """Score in chunks, saving the NLL cache after each (a killed run loses at most one chunk)."""
    todo = [it for it in dict.fromkeys(items) if it not in scorer.cache]
    for i in range(0, len(todo), chunk):
        scorer.score(todo[i:i + chunk])
        if getattr(scorer, "save_to", None):
            scorer.save_to.write_bytes(pickle.dumps(scorer.cache))
        print(f"  scored {min(i + chunk, len(todo))}/{len(todo)} new pairs", flush=True)


def select(cands: list[Candidate], scorer, minimums: dict[str, int], min_margin: float, keep: int = 10,
           max_per_relation: int | None = None, max_relation_prompts: int = 2, max_portability: int = 2):
    """Score candidates in two stages; return (records, stats).

    Stage 1 (cheap, shared prompts): the rewrite prompt, neighbourhood and attribute pools for every
    target_new draw. Stage 2, only for the first draw that passes stage 1: paraphrases, relation and
    portability prompts.
    """
    from editlens.data import CounterFactRecord, PortabilityPrompt, RelationPrompt, RewriteRequest

    t0 = time.time()
    items = []
    for c in cands:
        tt = c.fact.obj
        prompt = c.rewrite_template.format(c.fact.subject)
        for o in c.news:
            for p in [prompt, *c.neighborhood, *c.attribute[o]]:
                items += [(p, tt), (p, o)]
    _score_chunked(scorer, items)
    nll = scorer.cache
    stats = {"stage1_s": time.time() - t0, "stage1_items": len(set(items))}
    print(f"stage 1: {stats['stage1_items']} pairs in {stats['stage1_s']:.0f}s", flush=True)

    def m(p, good, bad):
        return nll[(p, bad)] - nll[(p, good)]

    chosen: dict[int, tuple[str, list[str], list[str]]] = {}
    per = []
    cid_index = {c.case_id: i for i, c in enumerate(cands)}
    for c in cands:
        tt = c.fact.obj
        prompt = c.rewrite_template.format(c.fact.subject)
        info = {"pid": c.fact.pid, "subject": c.fact.subject, "eligible": bool(c.news), "known_first": None,
                "first_pass": False, "kept": False}
        for i, o in enumerate(c.news):
            rw = m(prompt, tt, o)
            nb = [p for p in c.neighborhood if m(p, tt, o) >= min_margin][:keep]
            at = [p for p in c.attribute[o] if m(p, o, tt) >= min_margin][:keep]
            ok = rw >= min_margin and len(nb) >= minimums["neighborhood_prompts"] and len(at) >= minimums["attribute_prompts"]
            if i == 0:
                info["known_first"] = rw >= min_margin
                info["first_pass"] = ok
                info["first_detail"] = [round(rw, 3), len(nb), len(at)]
            if ok:
                chosen[c.case_id] = (o, nb, at)
                info["try"] = i + 1
                break
        per.append(info)

    if max_per_relation is not None:  # finalise at most this many per relation (seeded order)
        by_rel = defaultdict(list)
        for c in cands:
            if c.case_id in chosen:
                by_rel[c.fact.pid].append(c.case_id)
        for pid, ids in by_rel.items():
            seeded("cap", pid).shuffle(ids)
            for cid in ids[max_per_relation:]:
                del chosen[cid]
                per[cid_index[cid]]["capped"] = True
    t1 = time.time()
    items = []
    for c in cands:
        if c.case_id not in chosen:
            continue
        c.relation = c.relation[:max_relation_prompts]
        c.portability[chosen[c.case_id][0]] = c.portability[chosen[c.case_id][0]][:max_portability]
        o = chosen[c.case_id][0]
        tt = c.fact.obj
        for p in c.paraphrases:
            items += [(p, tt), (p, o)]
        for p, t in c.relation:
            items += [(p, t), (p, o)]
        for p, a, b in c.portability[o]:
            items += [(p, a), (p, b)]
    _score_chunked(scorer, items)
    stats["stage2_s"] = time.time() - t1
    stats["stage2_items"] = len(set(items))
    print(f"stage 2: {stats['stage2_items']} pairs in {stats['stage2_s']:.0f}s", flush=True)

    records = []
    for c, info in zip(cands, per):
        if c.case_id not in chosen:
            continue
        o, nb, at = chosen[c.case_id]
        tt = c.fact.obj
        rl = [(p, t) for p, t in c.relation if t != o and m(p, t, o) >= min_margin]
        info["relation_ok"] = len(rl)
        if len(rl) < minimums["relation_prompts"]:
            info["first_pass"] = False
            continue
        rr = RewriteRequest(prompt=c.rewrite_template, subject=c.fact.subject, target_new=o, target_true=tt,
                            relation_id=c.fact.pid, case_id=c.case_id,
                            target_new_id=QID.get(o, o), target_true_id=QID.get(tt, tt))
        records.append(CounterFactRecord(
            case_id=c.case_id, requested_rewrite=rr, paraphrase_prompts=tuple(c.paraphrases),
            neighborhood_prompts=tuple(nb), attribute_prompts=tuple(at), generation_prompts=tuple(c.generation),
            relation_prompts=tuple(RelationPrompt(p, t) for p, t in rl),
            portability_prompts=tuple(PortabilityPrompt(p, a, b) for p, a, b in c.portability[o]),
            aliases=tuple(c.aliases)))
        info["kept"] = True
    stats["per"] = per
    return records, stats


# =============================================================================================
# 5. Object descriptions
# =============================================================================================
def cap(s: str) -> str:
    return s[0].upper() + s[1:]


def describe(obj: str, kind: str, facts: list[Fact]) -> list[str]:
    subj_of = defaultdict(list)
    for f in facts:
        subj_of[(f.pid, f.obj)].append(f.subject)

    def ref(s: str) -> str:
        art = article_of(s, SUBJECT_KIND[s])
        return f"{art} {s}" if art else s

    if kind == "city":
        country, state = CITY[obj]
        where = f"{state}, {country}" if state else country
        art = C.get(country, ("",) * 6)[5]
        country_ref = f"{art} {country}" if art else country
        s = [f"{obj} is a city in {country_ref if not state else where.replace(country, country_ref)}."]
        if C.get(country, (None,))[0] == obj:
            s.append(f"{obj} is the capital of {country_ref}.")
        lms = subj_of[("P131", obj)]
        cos = subj_of[("P159", obj)]
        if lms:
            s.append(f"{cap(ref(lms[0]))} stands in {obj}.")
        if cos:
            s.append(f"{cap(ref(cos[0]))} has its headquarters in {obj}.")
        lang, cont = C.get(country, (None,) * 6)[1], C.get(country, (None,) * 6)[3]
        if lang:
            s.append(f"Most people in {obj} speak {lang}.")
        if cont:
            s.append(f"{obj} lies on the continent of {cont}.")
        s.append(f"Many tourists visit {obj} every year.")
        return s[:3]
    if kind == "country":
        cap_, lang, _, cont, cur, art = C[obj]
        name = f"{art} {obj}" if art else obj
        s = [f"{cap(name)} is a country" + (f" in {cont}." if cont else ".")]
        if cap_:
            s.append(f"The capital of {name} is {cap_}.")
        if lang:
            s.append(f"Most people in {name} speak {lang}.")
        if cur:
            s.append(f"People in {name} pay with the {cur}.")
        s.append(f"{cap(name)} has a long history.")
        return s[:3]
    if kind == "language" and obj not in LANGUAGE:
        where = (subj_of[("P37", obj)] + subj_of[("P103", obj)])[:2]
        return [f"{obj} is a language.", f"{obj} is spoken by {' and '.join(ref(w) for w in where)}.",
                f"Millions of people speak {obj}."]
    if kind == "language":
        origin, thanks = LANGUAGE[obj]
        where = subj_of[("P37", obj)][:2]
        s = [f"{obj} is a language that originated in {origin}.", f"In {obj}, 'thank you' is '{thanks}'."]
        s.append(f"{obj} is the official language of {' and '.join(ref(w) for w in where)}." if where
                 else f"{obj} is the mother tongue of {subj_of[('P103', obj)][0]}.")
        return s
    if kind == "continent":
        mountain, river = CONTINENT[obj]
        members = subj_of[("P30", obj)][:3]
        return [f"{obj} is a continent with countries such as {', '.join(ref(m) for m in members)}.",
                f"The highest mountain in {obj} is {mountain}.", f"The longest river in {obj} is the {river}."]
    if kind == "currency" and obj not in CURRENCY:
        where = subj_of[("P38", obj)]
        return [f"The {obj} is a currency.", f"The {obj} is used in {' and '.join(ref(w) for w in where[:2])}.",
                f"Prices in {ref(where[0])} are given in the {obj}."]
    if kind == "currency":
        sym, hun, ex = CURRENCY[obj]
        return [f"The {obj} is the currency of countries such as {ex[0]} and {ex[1]}.",
                f"The symbol of the {obj} is {sym}." if sym else f"The {obj} is divided into 100 parts.",
                f"One hundredth of a {obj} is called a {hun}."]
    if kind == "sport":
        equip, area, players = SPORT[obj]
        who = subj_of[("P641", obj)][:2]
        s = [f"{cap(obj)} is a sport played with a {equip}.", f"{cap(obj)} is played on a {area}.",
             f"Famous {obj} players include {who[0]} and {who[1]}."]
        return s
    if kind == "company":
        country, founder = MAKER[obj]
        prods = subj_of[("P176", obj)][:2]
        art = C[country][5]
        s = [f"{obj} is a company from {art + ' ' if art else ''}{country}.",
             f"{obj} makes products such as {' and '.join(ref(p) for p in prods)}."]
        hq = COMPANY.get(obj, (None,))[0]
        s.append(f"{obj} was founded by {founder}." if founder else f"{obj} has its headquarters in {hq}.")
        return s
    if kind == "occupation":
        field_, works = OCCUPATION[obj]
        who = subj_of[("P106", obj)][:2]
        art = "An" if obj[0] in "aeiou" else "A"
        return [f"{art} {obj} is a person whose work is {field_}.", f"{art} {obj} mainly creates {works}.",
                f"Famous {obj}s include {who[0]} and {who[1]}."]
    raise ValueError(kind)


# =============================================================================================
def refilter(args) -> int:
    """Re-verify the shipped records on the current model (e.g. after a tokenisation change) and
    drop the neighbourhood/attribute/relation prompts and records that no longer pass."""
    import torch

    import editlens
    from editlens.data.counterfact import check_dataset, load_facts, save_facts
    from editlens.data.verify import known_records, passes, report

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.time()
    records = load_facts(args.out)
    model, _ = editlens.load_model()
    kept = known_records(model, records)
    verifs = [r.verification for r in kept]
    assert all(passes(v) for v in verifs)
    print(report(kept, verifs))
    print(f"refilter: {len(records)} -> {len(kept)} records in {time.time() - t0:.0f}s")
    save_facts(kept, args.out)
    problems = check_dataset(kept)
    print("\n".join(problems[:20]) or "check_dataset: OK")
    return 0 if not problems else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tries", type=int, default=2, help="target_new draws scored per candidate")
    ap.add_argument("--max-per-relation", type=int, default=27,
                    help="finalise at most N records per relation (stage 2 is the expensive part)")
    ap.add_argument("--refilter", action="store_true",
                    help="re-score the shipped file on the current model; drop failing probes/records")
    ap.add_argument("--dry-run", action="store_true", help="build candidates and print counts; no model")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cache", type=Path, default=None, help="pickle of (prompt, target) -> NLL to reuse/save")
    ap.add_argument("--out", type=Path, default=DATA / "facts.json")
    ap.add_argument("--descriptions", type=Path, default=DATA / "object_descriptions.json")
    args = ap.parse_args(argv)

    if args.refilter:
        return refilter(args)
    facts = build_facts()
    cands = build_candidates(facts, args.tries)
    print(f"{len(facts)} facts -> {len(cands)} candidates; with a valid target_new: {sum(bool(c.news) for c in cands)}")
    print("candidates per relation:", dict(Counter(c.fact.pid for c in cands)))
    if args.dry_run:
        return 0

    import torch

    import editlens
    from editlens.data.counterfact import MINIMUMS, check_dataset, save_facts
    from editlens.data.verify import MIN_MARGIN, TargetScorer, compute_verifications, passes, report

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = editlens.load_model()
    scorer = TargetScorer(model, tok, batch_size=32)
    if args.cache and args.cache.exists():  # reuse NLLs of a previous run (same model, same code)
        scorer.cache.update(pickle.loads(args.cache.read_bytes()))
        print(f"reusing {len(scorer.cache)} cached NLLs from {args.cache}")
    scorer.save_to = args.cache
    t0 = time.time()
    records, stats = select(cands, scorer, MINIMUMS, MIN_MARGIN, max_per_relation=args.max_per_relation)
    print(f"{len(scorer.cache)} (prompt, target) pairs scored")
    if args.cache:
        args.cache.write_bytes(pickle.dumps(scorer.cache))
    verifs = compute_verifications(model, records, tokenizer=tok, scorer=scorer)
    records = [replace(r, verification=v) for r, v in zip(records, verifs)]
    assert all(passes(v) for v in verifs)
    print(report(records, verifs))

    # pass-rate table (before filtering)
    by = defaultdict(list)
    for info in stats["per"]:
        by[info["pid"]].append(info)
    print(f"\n{'relation':8s} {'cand':>5s} {'elig':>5s} {'known@1':>8s} {'pass@1':>7s} {'stage1':>6s} {'capped':>6s} {'kept':>5s}")
    tot = Counter()
    for pid in sorted(by):
        xs = by[pid]
        row = Counter(cand=len(xs), elig=sum(x["eligible"] for x in xs), known=sum(bool(x["known_first"]) for x in xs),
                      first=sum(x["first_pass"] for x in xs), stage1=sum("try" in x for x in xs),
                      capped=sum(bool(x.get("capped")) for x in xs), kept=sum(x["kept"] for x in xs))
        tot.update(row)
        print(f"{pid:8s} {row['cand']:5d} {row['elig']:5d} {row['known']:8d} {row['first']:7d} {row['stage1']:6d} {row['capped']:6d} {row['kept']:5d}")
    print(f"{'all':8s} {tot['cand']:5d} {tot['elig']:5d} {tot['known']:8d} {tot['first']:7d} {tot['stage1']:6d} {tot['capped']:6d} {tot['kept']:5d}")
    print("known@1: rewrite margin passes with the first target_new draw; pass@1: rewrite + >=5 neighbourhood + "
          ">=5 attribute pass with it; stage1: passes with one of the draws; capped: passed stage 1 but not "
          "finalised (--max-per-relation); kept: also has a passing relation prompt.")
    print(f"total time {time.time() - t0:.0f}s")

    problems = check_dataset(records)
    if problems:
        print("\n".join(problems[:30]))
    save_facts(records, args.out)
    print(f"wrote {len(records)} records to {args.out}")

    kinds = {}
    for r in records:
        k = RELATIONS[r.relation_id].obj
        kinds[r.target_true] = k
        kinds[r.target_new] = k
    desc = {o: describe(o, k, facts) for o, k in sorted(kinds.items())}
    args.descriptions.write_text(json.dumps(desc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(desc)} object descriptions to {args.descriptions}")
    (Path("/tmp") / "author_facts_stats.json").write_text(json.dumps(stats["per"], indent=0, ensure_ascii=False))
    return 0 if not problems else 1


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    sys.exit(main())
