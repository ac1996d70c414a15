"""The synthetic world: a seeded procedural generator of small images with a known scene graph.

Each image holds one to three objects (shape, colour, size, texture) on a background, with spatial
relations between objects that share a row or a column. The modules, from words to data:

- ``vocabulary``: shapes, colours, sizes, textures, backgrounds, relations, and the world's metadata entries;
- ``shapes``: every shape class as drawing steps (SHAPES is that table's keys);
- ``scenes``: scene graphs (long-tailed or uniform draws, layout, relations) and TRUTH_SCHEMA;
- ``rendering`` and ``png``: a scene to pixels, and pixels to PNG bytes;
- ``alttext``: faithful descriptions and the web-like alt-text mixture;
- ``pool``: WorldConfig and generate_pool, the raw pool that ingest reads;
- ``evaluation``: the balanced evaluation sets, from seeds apart from the pool's;
- ``captioner``: the simulated vision-language captioner, which writes from a scene's truth.

Only the captioner and the evaluation sets read a scene's truth for a pool image; the simulated rewriter
(``curation.rewriter``) and ``training/`` never import this package.
"""
