"""Word lists behind the semantic-cache guard (see guard.py for how each is used).

General English and world knowledge only: function words, number words, units, opposite pairs,
time words, language names, places. Keep entries lowercase; multiword phrases are joined with a
space and matched on token boundaries.
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _phrases(text: str) -> frozenset[str]:
    return frozenset(p.strip() for p in text.split(",") if p.strip())


STOPWORDS = _words(
    """a an the this that these those my your our their his her its it it's i me we you he she
    they them us is are was were be been being am do does did doing done have has had having
    can could should would will shall may might must of in on at for by with about as and or
    but if so then than to into from what which who whom whose when where why how whats hows
    there here please tell show give explain me some any just also very really much many
    get got way best good i'm i've you're let's ok okay like using use used one ones thing things
    need want know make want wanted trying try should'd up out"""
)
"""Words that carry no content for the order and substitution checks."""

NUMBER_WORDS = {
    "zero": 0, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6,
    "seven": 7, "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "dozen": 12, "half": 0.5, "quarter": 0.25,
    "couple": 2, "pair": 2, "twice": 2, "thrice": 3, "single": 1, "double": 2, "triple": 3,
}  # fmt: skip
MAGNITUDES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
ORDINALS = {
    "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8,
    "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20, "hundredth": 100,
}  # fmt: skip

# "dimension: canonical alias alias ... | canonical alias ..." per line; short or ambiguous aliases
# count only right after a number (see SHORT_UNITS and AFTER_NUMBER_ONLY)
_UNIT_TABLE = """
length: km kilometer kilometers kilometre kilometres | m meter meters metre metres |
    cm centimeter centimeters centimetre | mm millimeter millimeters | mile miles mi |
    ft foot feet | inch inch inches | yard yards yd
mass: kg kilogram kilograms kilo kilos | g gram grams | mg milligram milligrams |
    lb lbs pound pounds | oz ounce ounces | ton tons tonne tonnes
volume: l liter liters litre litres | ml milliliter milliliters | gallon gallons gal |
    cup cups | tbsp tablespoon tablespoons | tsp teaspoon teaspoons | pint pints | quart quarts
temperature: celsius centigrade | fahrenheit | kelvin
data: byte bytes | bit bits | kb kilobyte kilobytes kib | mb megabyte megabytes mib |
    gb gigabyte gigabytes gib | tb terabyte terabytes tib
rate: mbps | gbps | mph | kph kmh | knot knots
time: ms millisecond milliseconds | s sec secs seconds | minute minutes mins |
    hour hours hr hrs | day days | week weeks | month months | year years yr yrs |
    decade decades | century centuries
money: usd dollar dollars $ | eur euro euros € | gbp sterling £ | jpy yen ¥ | inr rupee rupees |
    cny yuan rmb | btc bitcoin bitcoins
ratio: percent percentage %
power: watt watts w | kw kilowatt kilowatts | kwh | calorie calories kcal cal | volt volts |
    amp amps ampere | hz hertz | mhz | ghz
other: px pixel pixels | degree degrees | acre acres | hectare hectares ha
"""
UNITS: dict[str, str] = {}
DIMENSION: dict[str, str] = {}
_lines: list[str] = []
for _line in _UNIT_TABLE.strip().splitlines():
    if _line.startswith(" ") and _lines:
        _lines[-1] += " " + _line.strip()
    else:
        _lines.append(_line.strip())
for _line in _lines:
    _dim, _, _groups = _line.partition(":")
    for _group in _groups.split("|"):
        _canon, *_aliases = _group.split()
        DIMENSION[_canon] = _dim
        for _alias in (_canon, *_aliases):
            UNITS[_alias] = _canon
AFTER_NUMBER_ONLY = _words("m g s l w ha mi ms cal gal yd ft oz lb lbs min sec cup cups $")
"""Aliases too short or too common to mean a unit unless a number comes first."""
SHORT_UNITS = {"m": "m", "g": "g", "s": "s", "c": "celsius", "f": "fahrenheit", "l": "l",
               "h": "hour", "min": "minute", "w": "watt", "second": "s"}  # fmt: skip
"""Aliases that are units only right after a number (``5 m``, ``30 C``)."""
MULTIPLIERS = {"k": 1e3, "K": 1e3, "M": 1e6, "bn": 1e9, "B": 1e9}
"""Written right after a number: ``10k``, ``$5M``."""

NEGATORS = _words(
    """not no never without none nothing nobody nowhere neither nor cannot unable can't don't
    doesn't didn't isn't aren't wasn't weren't won't wouldn't shouldn't couldn't haven't hasn't
    hadn't mustn't needn't ain't dont doesnt didnt isnt arent cant wont wouldnt shouldnt
    couldnt havent hasnt non"""
)

NOW_WORDS = _words("now currently current nowadays presently")
TIME_WORDS = _words(
    """today tomorrow yesterday tonight morning afternoon evening night midnight noon dawn
    weekend weekday weekdays monday tuesday wednesday thursday friday saturday sunday january
    february march april june july august september october november december spring summer
    autumn winter ago later soon daily weekly monthly yearly annually hourly nightly
    overnight earlier recently future past upcoming"""
)
DEICTIC_TIMES = _words(
    """today tomorrow yesterday tonight monday tuesday wednesday thursday friday saturday sunday
    january february march april june july august september october november december"""
)
"""Time words that pin a question to a day even when the other question names no time."""
TIME_MODIFIERS = _words("next last this previous past coming upcoming following prior")
TIME_UNITS = _words(
    """day week weekend month year quarter season decade century summer winter spring autumn fall
    morning afternoon evening night monday tuesday wednesday thursday friday saturday sunday
    semester term"""
)

# One opposition per line: "kind: words of one pole / words of the other". A pair of questions is
# rejected when one uses only the first pole of a line and the other only the second.
_OPPOSITES = """
negation: enable, enabled, enables, enabling, turn on, switch on, turned on / disable, disabled,
    disables, disabling, turn off, switch off, turned off, off
negation: activate, activated / deactivate, deactivated
negation: with, include, includes, included, including / without, exclude, excludes, excluded,
    excluding, except
negation: allow, allowed, allows, permit, permitted, accept, accepted, grant, approve, whitelist,
    unblock / deny, denied, block, blocked, forbid, forbidden, prohibit, prohibited, reject,
    rejected, refuse, ban, banned, disallow, blacklist, prevent, decline
negation: show, shows, display, reveal, unhide, expand / hide, hides, conceal, collapse
negation: visible, shown, displayed / hidden, invisible, concealed
negation: add, adding, insert, append, attach, create / remove, removing, delete, deleting, drop,
    detach, erase, destroy
negation: install, installing, installed / uninstall, uninstalling, uninstalled
negation: mount / unmount
negation: subscribe, register, join, follow / unsubscribe, unregister, leave, unfollow
negation: connect, connected, plug in / disconnect, disconnected, unplug
negation: log in, login, sign in, logged in / log out, logout, sign out, logged out
negation: start, starting, begin, launch, resume, boot / stop, stopping, kill, terminate, pause,
    halt, quit, shutdown, shut down
negation: open, opened / close, closed, shut
negation: true / false
negation: yes / no
negation: positive / negative
negation: valid / invalid
negation: correct, right / incorrect, wrong
negation: success, succeed, successful, pass, passed / failure, fail, failed, unsuccessful
negation: safe, harmless / unsafe, dangerous, toxic, poisonous, harmful
negation: legal / illegal
negation: healthy / unhealthy
negation: good / bad
negation: pros, benefit, benefits, advantage, advantages / cons, drawback, drawbacks,
    disadvantage, disadvantages, risks
negation: like, love / dislike, hate
negation: agree / disagree
negation: same, similar, identical / different, distinct
negation: win, winning, won, gain, gained / lose, losing, lost
negation: full, filled / empty
negation: wet / dry
negation: even / odd
negation: male, men, man, boy, boys / female, women, woman, girl, girls
negation: add, addition, plus, sum / subtract, subtraction, minus
negation: multiply, multiplication, times, product / divide, division, quotient
negation: enter, entrance, entry / exit
negation: early / late
negation: cause, causes / cure, cures, treat, prevents
negation: private / public
negation: online / offline
negation: lock, locked / unlock, unlocked
negation: encrypt, encrypted / decrypt, decrypted
negation: encode, encoded, encoder / decode, decoded, decoder
negation: compress, compressed / decompress, decompressed, uncompress
negation: zip / unzip
negation: serialize / deserialize
negation: freeze / unfreeze
negation: mute, muted / unmute, unmuted
negation: pack / unpack
negation: sync, synchronous / async, asynchronous
negation: symmetric / asymmetric
direction: upload, uploading / download, downloading
direction: import, importing / export, exporting
direction: push / pull
direction: send, sending / receive, receiving
direction: buy, buying / sell, selling
direction: lend / borrow
direction: input / output
direction: incoming, inbound / outgoing, outbound
direction: upstream / downstream
direction: forward / backward, backwards
direction: up / down
direction: left / right
direction: north / south
direction: east / west
direction: above / below
direction: before / after
direction: over / under
direction: inside / outside
direction: internal / external
direction: ascending, asc / descending, desc
direction: increase, increment, raise / decrease, decrement, reduce
direction: upgrade / downgrade
direction: uppercase, upper / lowercase, lower
direction: arrive, arrival, arrivals / depart, departure, departures
direction: read, reading / write, writing
direction: parent / child
direction: inner / outer
direction: horizontal, horizontally / vertical, vertically
direction: row, rows / column, columns
direction: prefix / suffix
direction: earlier / later
direction: past / future
direction: source / destination, target
direction: sunrise, rise / sunset, set
scope: first, beginning, start of / last, end, end of
scope: top / bottom
scope: head / tail
scope: all, every, entire, whole, everything, everyone, always, full, both / some, few,
    several, certain, partial, part of, subset, sometimes, either, only one, one of, one, leading,
    trailing
comparison: bigger, biggest, larger, largest, greater, greatest, big, large, huge / smaller,
    smallest, small, little, tiny
comparison: more, most / less, lesser, least, fewer, fewest
comparison: higher, highest, high / lower, lowest, low
comparison: max, maximum, maximize / min, minimum, minimize
comparison: longer, longest, long / shorter, shortest, short
comparison: taller, tallest, tall / shorter, shortest, short
comparison: heavier, heaviest, heavy / lighter, lightest, light
comparison: wider, widest, wide / narrower, narrowest, narrow
comparison: thicker, thickest, thick / thinner, thinnest, thin
comparison: deeper, deepest, deep / shallower, shallowest, shallow
comparison: faster, fastest, quicker, quickest, fast, quick / slower, slowest, slow
comparison: older, oldest, elder, old, earliest / younger, youngest, newer, newest, young, new,
    latest
comparison: better, best, superior / worse, worst, inferior
comparison: expensive, pricier, costlier / cheap, cheaper, cheapest, affordable, inexpensive
comparison: hotter, hottest, warmer, warmest, hot, warm / colder, coldest, cooler, coolest, cold,
    cool
comparison: stronger, strongest, strong / weaker, weakest, weak
comparison: harder, hardest, difficult, hard / easier, easiest, easy, simpler, simplest, simple
comparison: safer, safest / riskier, riskiest
comparison: richer, richest, rich / poorer, poorest, poor
comparison: louder, loudest, loud / quieter, quietest, quiet
comparison: smarter, smartest, smart / dumber, dumbest, dumb
comparison: popular / unpopular
"""


def _opposites(text: str) -> tuple[tuple[str, frozenset[str], frozenset[str]], ...]:
    lines: list[str] = []
    for line in text.strip().splitlines():
        if line.startswith(" ") and lines:
            lines[-1] += " " + line.strip()
        else:
            lines.append(line.strip())
    out = []
    for line in lines:
        kind, _, body = line.partition(":")
        first, _, second = body.partition("/")
        out.append((kind.strip(), _phrases(first), _phrases(second)))
    return tuple(out)


OPPOSITES = _opposites(_OPPOSITES)
"""(kind, one pole, the other pole) for each line of the table above."""
COMPARISON_FLIPPERS = _words("less least fewer")
"""``less expensive`` means ``cheaper``: these flip the pole of the word after them."""

FORWARD = _words("to into onto towards toward -> →")
"""Markers of a flow from the words before them to the words after them."""
BACKWARD = _words("from")
THAN = _words("than")
NON_COMMUTATIVE = _words(
    """- / ^ ** minus subtract subtracted subtracting divide divided dividing over power mod
    modulo from to than of into exponent root log base percent % out choose"""
)

PROGRAMMING = {
    "python": "python", "py": "python", "javascript": "javascript", "js": "javascript",
    "typescript": "typescript", "ts": "typescript", "java": "java", "c++": "c++", "cpp": "c++",
    "c#": "c#", "csharp": "c#", "f#": "f#", "golang": "go", "rust": "rust", "ruby": "ruby",
    "php": "php", "perl": "perl", "swift": "swift", "kotlin": "kotlin", "scala": "scala",
    "haskell": "haskell", "lua": "lua", "bash": "bash", "shell": "bash", "zsh": "bash",
    "powershell": "powershell", "sql": "sql", "html": "html", "css": "css", "matlab": "matlab",
    "julia": "julia", "dart": "dart", "elixir": "elixir", "erlang": "erlang",
    "clojure": "clojure", "fortran": "fortran", "cobol": "cobol", "assembly": "assembly",
    "vba": "vba", "groovy": "groovy", "ocaml": "ocaml", "zig": "zig", "solidity": "solidity",
    "objective-c": "objective-c", "lisp": "lisp", "pascal": "pascal", "prolog": "prolog",
    "visual basic": "vb", "vb.net": "vb",
}  # fmt: skip
CASED_PROGRAMMING = {"Go": "go", "R": "r", "C": "c", "D": "d"}
"""Languages whose names are common words or letters: only counted as written."""

NATURAL = _words(
    """english french spanish german italian portuguese dutch russian chinese mandarin cantonese
    japanese korean arabic hindi bengali turkish polish swedish norwegian danish finnish greek
    hebrew thai vietnamese indonesian malay ukrainian czech romanian hungarian latin persian farsi
    urdu swahili tagalog catalan basque welsh irish punjabi tamil telugu marathi gujarati"""
)

# Function words that tell the language of a question written in a Latin script.
LATIN_PROFILES = {
    "en": _words("the is are what how do does to of and in for my i you it can with why which"),
    "es": _words("el la los las es que cómo como qué por para una un de del con mi en y por qué"),
    "fr": _words("le la les est que comment quel quelle pour une un des du avec mon je et en"),
    "de": _words("der die das ist wie was ich ein eine und mit für mein nicht zu den dem ist es"),
    "it": _words("il lo la gli è che come cosa per una un di con mio e non della sono"),
    "pt": _words("o os as é que como qual para uma um de com meu e não em do da são"),
    "nl": _words("de het een is hoe wat ik en met voor mijn niet van zijn"),
}

GAZETTEER = _phrases(
    """afghanistan, albania, algeria, argentina, armenia, australia, austria, bangladesh, belgium,
    bolivia, brazil, bulgaria, cambodia, cameroon, canada, chile, china, colombia, croatia, cuba,
    cyprus, czechia, denmark, ecuador, egypt, estonia, ethiopia, finland, france, georgia, germany,
    ghana, greece, guatemala, hungary, iceland, india, indonesia, iran, iraq, ireland, israel,
    italy, jamaica, japan, jordan, kazakhstan, kenya, korea, kuwait, laos, latvia, lebanon, libya,
    lithuania, luxembourg, malaysia, mali, malta, mexico, mongolia, morocco, nepal, netherlands,
    holland, nigeria, norway, pakistan, panama, paraguay, peru, philippines, poland, portugal,
    qatar, romania, russia, rwanda, scotland, senegal, serbia, singapore, slovakia, slovenia,
    somalia, spain, sudan, sweden, switzerland, syria, taiwan, tanzania, thailand, tunisia, turkey,
    uganda, ukraine, uruguay, uzbekistan, venezuela, vietnam, wales, yemen, zambia, zimbabwe,
    england, britain, usa, america, africa, asia, europe, antarctica, oceania, london, paris,
    berlin, madrid, rome, lisbon, dublin, amsterdam, brussels, vienna, prague, warsaw, budapest,
    athens, moscow, kyiv, kiev, istanbul, cairo, lagos, nairobi, dubai, tokyo, osaka, kyoto,
    beijing, shanghai, seoul, delhi, mumbai, bangalore, karachi, bangkok, jakarta, manila, sydney,
    melbourne, auckland, toronto, vancouver, montreal, chicago, boston, seattle, denver, dallas,
    houston, austin, miami, atlanta, phoenix, detroit, philadelphia, washington, california,
    texas, florida, oregon, nevada, ohio, alaska, hawaii, arizona, colorado, utah, virginia,
    mercury, venus, mars, jupiter, saturn, uranus, neptune, pluto, google, apple,
    microsoft, amazon, tesla, netflix, facebook, meta, twitter, nvidia, intel, amd, samsung,
    sony, ibm, oracle, linux, windows, macos, ubuntu, debian, fedora, android, ios, iphone, ipad,
    docker, kubernetes, aws, azure, gcp, postgres, postgresql, mysql, sqlite, mongodb, redis,
    react, vue, angular, django, flask, fastapi, numpy, pandas, pytorch, tensorflow, git, github,
    gitlab, excel, chrome, firefox, safari, vim, emacs, vscode, nginx, apache, kafka, spark,
    bitcoin, ethereum, csv, json, xml, yaml, toml, pdf, png, jpeg, jpg, gif, mp3, mp4, zip, tar"""
)
