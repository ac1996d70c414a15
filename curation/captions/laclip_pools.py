"""In-context example pools of the `rewrite` stage, one per LaCLIP meta-input-output strategy.

LaCLIP ("Improving CLIP Training with Language Rewrites", Fan et al. 2023, Sec. 3.2) prompts a base LLM with
three `source => target` pairs drawn from one of four pools, and rewrites every caption once per pool:

- ``chatgpt``: ChatGPT was asked to rewrite alt-texts; its targets are fluent, slightly elaborated sentences.
- ``bard``: the same with Bard, whose rewrites add a little vivid wording or detail.
- ``human``: people rewrote the alt-texts; the targets are natural, varied paraphrases, often short and casual.
- ``coco``: two COCO captions of the same image; the target is another plain caption of the scene.

The pairs below were written for curaclip (the authors' pairs, in their rewrite/utils.py, are not reused).
Sources read like noisy web alt-text; every target keeps its source's concepts (no invented objects), says
them in other words, and is one line without ``=>`` (the prompt's separator). LaCLIP's ``coco`` pool holds
five captions per image and draws two of them as a pair; here it holds fixed pairs, like the other three.
"""

from __future__ import annotations

CHATGPT: tuple[tuple[str, str], ...] = (
    ("red vintage bicycle leaning against brick wall stock photo",
     "A red vintage bicycle leans against a weathered brick wall."),
    ("golden retriever puppy playing in the snow .", "A playful golden retriever puppy bounds through fresh snow."),
    ("womens leather ankle boots brown size 7", "A pair of brown leather ankle boots for women, shown in size 7."),
    ("sunset over the lake with mountains in background",
     "The sun sets over a calm lake, with mountains rising in the background."),
    ("person speaks during a press conference at the white house",
     "A person addresses reporters during a press conference at the White House."),
    ("fresh homemade pizza with basil and tomatoes on wooden board",
     "A freshly made homemade pizza topped with basil and tomatoes, served on a wooden board."),
    ("aerial view of the city at night", "An aerial view of the city, illuminated against the night."),
    ("cat sleeping on a laptop keyboard lol", "A cat curled up fast asleep on a laptop keyboard."),
    ("modern kitchen interior with white cabinets and marble countertop",
     "A modern kitchen interior featuring white cabinets and a sleek marble countertop."),
    ("kids running on the beach summer 2015", "Children running along the beach in the summer of 2015."),
    ("old stone bridge over the river in autumn", "An old stone bridge spans the river on an autumn day."),
    ("blue ceramic coffee mug on a desk", "A blue ceramic coffee mug sits neatly on a desk."),
    ("football player celebrates after scoring a goal during the match",
     "A football player celebrates jubilantly after scoring a goal during the match."),
    ("hand drawn vector illustration of a fox", "A hand-drawn vector illustration depicting a fox."),
    ("tall glass of iced coffee with milk", "A tall glass of iced coffee swirled with milk."),
    ("traffic jam on the highway during rush hour", "A long traffic jam builds up on the highway during rush hour."),
    ("wedding rings on a bouquet of white roses", "Wedding rings resting delicately on a bouquet of white roses."),
    ("horse grazing in a field at sunrise", "A horse grazes peacefully in an open field at sunrise."),
)
"""ChatGPT-style targets: fluent full sentences, slightly elaborated."""

BARD: tuple[tuple[str, str], ...] = (
    ("lighthouse on a rocky coast", "A lighthouse stands guard over the rugged, rocky coast."),
    ("black cat sitting on a windowsill", "A sleek black cat perches on the windowsill, gazing out intently."),
    ("bowl of ramen noodles with egg", "A steaming bowl of ramen noodles crowned with a soft egg."),
    ("skier jumping off a snowy ridge", "A skier launches off a snowy ridge, soaring through the crisp air."),
    ("vintage typewriter on a wooden table",
     "A vintage typewriter rests on a wooden table, its keys waiting for the next story."),
    ("person walking alone in the rain with umbrella",
     "A lone figure walks through the pouring rain beneath an umbrella."),
    ("autumn leaves on the ground in the park", "Fallen autumn leaves blanket the ground of the park in warm hues."),
    ("elephant family at the waterhole", "An elephant family gathers together at the shimmering waterhole."),
    ("new smartphone model in silver color", "The new smartphone model gleams in a polished silver finish."),
    ("fireworks over the harbor on new year 's eve",
     "Fireworks burst in brilliant colors over the harbor on New Year's Eve."),
    ("farmer harvesting wheat with a tractor", "A farmer harvests golden wheat with a rumbling tractor."),
    ("child blowing bubbles in the garden", "A child blows shimmering bubbles that drift across the garden."),
    ("desert road leading to the mountains", "A lonely desert road stretches toward the distant mountains."),
    ("chocolate cake slice on a white plate", "A rich slice of chocolate cake sits temptingly on a white plate."),
    ("band performing live on stage at festival",
     "A band pours its energy into a live performance on the festival stage."),
    ("snow covered pine trees in the forest", "Pine trees stand hushed in the forest, heavy with fresh snow."),
    ("hummingbird feeding from a red flower", "A hummingbird hovers to sip nectar from a vivid red flower."),
)
"""Bard-style targets: a little vivid wording or sensory detail around the same concepts."""

HUMAN: tuple[tuple[str, str], ...] = (
    ("my dog after his first haircut lol", "my dog looking fresh after his very first haircut"),
    ("DIY wooden shelf for the living room", "A homemade wooden shelf built for the living room"),
    ("the view from our hotel balcony in santorini", "What we could see from our hotel balcony in Santorini"),
    ("organic green tea 100 bags", "a box of 100 organic green tea bags"),
    ("grandma 's apple pie recipe", "Grandma's own recipe for apple pie"),
    ("street musician playing violin downtown", "someone playing the violin on a downtown street"),
    ("first snow of the year in our backyard", "Our backyard under the year's first snowfall"),
    ("mens running shoes black/white", "Black and white running shoes for men"),
    ("two kittens sleeping together in a basket", "a pair of kittens napping side by side in a basket"),
    ("empty subway station late at night", "Nobody around in the subway station late at night"),
    ("watercolor painting of a sailboat by the artist", "a sailboat the artist painted in watercolor"),
    ("tomatoes growing in the greenhouse", "Tomato plants coming along inside a greenhouse"),
    ("happy couple on their engagement day", "the couple all smiles on the day they got engaged"),
    ("small wooden cabin in the woods", "a little wood cabin tucked away in the forest"),
    ("crowd watching the parade on main street", "People lined up along Main Street to watch the parade"),
    ("vintage leather armchair for sale", "An old leather armchair that's up for sale"),
    ("kid 's birthday party balloons", "balloons at a kid's birthday party"),
)
"""Human-style targets: natural, varied paraphrases, some casual or lower case, as people write them."""

COCO: tuple[tuple[str, str], ...] = (
    ("man riding a bike down the street", "A man is riding his bicycle along a street."),
    ("a plate with a sandwich and fries", "A sandwich and some french fries sitting on a plate."),
    ("two giraffes standing near trees", "Two giraffes stand next to some trees."),
    ("a kitchen with a stove and a refrigerator", "A kitchen that has a stove and a fridge in it."),
    ("a dog laying on a couch", "A dog is lying down on the couch."),
    ("a red double decker bus on a street", "A double decker bus that is red on the street."),
    ("a group of people flying kites in a park", "Several people are flying kites at the park."),
    ("a clock tower against a blue sky", "A clock tower in front of a blue sky."),
    ("a man holding a tennis racket on a court", "A tennis player holds his racket on the court."),
    ("a cat sitting in front of a laptop", "A cat is sitting in front of a laptop computer."),
    ("a bathroom with a toilet and a sink", "A bathroom containing a sink and a toilet."),
    ("a train going over a bridge", "A train crossing over a bridge."),
    ("a woman holding an umbrella in the rain", "A woman stands in the rain with an umbrella."),
    ("pizza with pepperoni on a wooden table", "A pepperoni pizza sitting on a wooden table."),
    ("a surfer riding a wave", "A person on a surfboard riding a wave."),
    ("a bowl of fruit on a counter", "A bowl filled with fruit sits on the counter."),
    ("a boat docked at a pier", "A boat is tied up at the pier."),
    ("an elephant walking through tall grass", "An elephant walks in some tall grass."),
)
"""COCO-style pairs: the target is another plain, literal caption of the same scene."""

POOLS: dict[str, tuple[tuple[str, str], ...]] = {"chatgpt": CHATGPT, "bard": BARD, "human": HUMAN, "coco": COCO}
"""The pools by the names `RewriteConfig.pools` uses (LaCLIP's ``--sample_mode``)."""
