-- description: Two models side by side, layers aligned by relative depth (depth = layer/(n_layers-1)): per concept and depth bin, the share of significant neurons and the mean selectivity of each model's top-ranked neurons.
-- param: model_a VARCHAR
-- param: model_b VARCHAR
-- param: concept VARCHAR = NULL
-- param: bins INTEGER = 10
-- param: top INTEGER = 100
WITH binned AS (
    SELECT
        model, concept, layer, selectivity, q_value, significant, lexical, rank,
        least(CAST(floor(depth * $bins + 1e-9) AS INTEGER), $bins - 1) AS depth_bin
    FROM scores
    WHERE (model = $model_a OR model = $model_b)
      AND ($concept IS NULL OR concept = $concept)
),
per_bin AS (
    SELECT
        model, concept, depth_bin,
        list(DISTINCT layer ORDER BY layer) AS layers,
        count(*) AS n_neurons,
        count(*) FILTER (WHERE (significant AND NOT lexical)) / count(*) AS share_significant,
        count(*) FILTER (WHERE rank <= $top) AS n_top,
        avg(selectivity) FILTER (WHERE rank <= $top) AS mean_selectivity_top
    FROM binned
    GROUP BY model, concept, depth_bin
),
a AS (SELECT * FROM per_bin WHERE model = $model_a),
b AS (SELECT * FROM per_bin WHERE model = $model_b)
SELECT
    coalesce(a.concept, b.concept) AS concept,
    coalesce(a.depth_bin, b.depth_bin) AS depth_bin,
    coalesce(a.depth_bin, b.depth_bin) / $bins AS depth_lo,
    (coalesce(a.depth_bin, b.depth_bin) + 1) / $bins AS depth_hi,
    $model_a AS model_a,
    a.layers AS a_layers,
    a.share_significant AS a_share_significant,
    a.n_top AS a_n_top,
    a.mean_selectivity_top AS a_mean_selectivity_top,
    $model_b AS model_b,
    b.layers AS b_layers,
    b.share_significant AS b_share_significant,
    b.n_top AS b_n_top,
    b.mean_selectivity_top AS b_mean_selectivity_top,
    b.share_significant - a.share_significant AS share_significant_diff
FROM a FULL OUTER JOIN b
  ON a.concept = b.concept AND a.depth_bin = b.depth_bin
ORDER BY concept, depth_bin
