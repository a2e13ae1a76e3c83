-- description: One row per run: what it ran, its status, row counts in the store and its timings (newest first); every run unless a model or concept is given.
-- param: model VARCHAR = NULL
-- param: concept VARCHAR = NULL
WITH s AS (
    SELECT run_id,
           count(*) AS n_scored,
           count(*) FILTER (WHERE (significant AND NOT lexical)) AS n_significant,
           count(rank) AS n_ranked
    FROM scores GROUP BY run_id
),
ab AS (
    SELECT run_id,
           count(*) AS n_ablations,
           count(DISTINCT (layer, neuron)) FILTER (WHERE mode = 'single' AND coalesce(validated, false)) AS n_validated
    FROM ablations GROUP BY run_id
)
SELECT
    r.run_id, r.model, r.concept, r.status, r.device, r.world_size, r.dtype, r.pooling,
    r.n_pos, r.n_neg, len(r.layers) AS n_layers_run, r.tokens,
    coalesce(s.n_scored, 0) AS n_scored,
    coalesce(s.n_significant, 0) AS n_significant,
    coalesce(s.n_ranked, 0) AS n_ranked,
    coalesce(ab.n_ablations, 0) AS n_ablations,
    coalesce(ab.n_validated, 0) AS n_validated,
    r.seconds_extract, r.seconds_score, r.seconds_ablate,
    coalesce(r.seconds_extract, 0) + coalesce(r.seconds_score, 0) + coalesce(r.seconds_ablate, 0) AS seconds_total,
    r.started_at, r.finished_at
FROM runs AS r
LEFT JOIN s USING (run_id)
LEFT JOIN ab USING (run_id)
WHERE ($model IS NULL OR r.model = $model)
  AND ($concept IS NULL OR r.concept = $concept)
ORDER BY r.started_at DESC NULLS LAST, r.run_id
