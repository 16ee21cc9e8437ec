"""`prerank serve`: the pre-rank scoring service.

One request: one user's raw features and thousands of candidate item ids. The user vector is computed once
(the ONNX user tower, or the export's user_embedding signature), the candidates' vectors come from the item
vector store of the served export (files or Redis) through a hot in-process cache, one matrix product
scores them, and a strategy (top-K, a score threshold, score tiers ordered by an item attribute) cuts them
to the K the fine ranker gets. New export versions are loaded, warmed up and swapped in under traffic once
their item vectors are in the store.

Modules: `schema` (request and response models, derived from the spec), `cache` (the hot cache),
`strategies` (the cut), `vectors` (where item vectors come from), `model` (one served export version),
`versions` (finding, loading and swapping versions), `metrics`, `app` (the FastAPI app) and `server`
(running it on uvicorn).
"""
