-- Every model x concept that has scores, with its size and its modality (image refs in examples.text);
-- lexical_control: the concept is another's lexical control (`<concept>+control`), which the
-- index leaves out (its counts show in its concept's report) unless asked for by name.
WITH s AS (
    SELECT model, concept, count(*) AS n_scored, max(n_layers) AS n_layers,
           count(DISTINCT layer) AS n_layers_scored
    FROM scores GROUP BY ALL
), e AS (
    SELECT model, concept,
           avg(CASE WHEN regexp_matches(text, '^builtin:|\.(png|jpe?g|bmp|gif|webp|tiff?)$', 'i')
                    THEN 1 ELSE 0 END) AS image_share
    FROM examples GROUP BY ALL
)
SELECT s.model, s.concept, s.n_scored, s.n_layers, s.n_layers_scored,
       CASE WHEN coalesce(e.image_share, 0) > 0.5 THEN 'vision' ELSE 'text' END AS modality,
       s.concept LIKE '%+control' AS lexical_control
FROM s LEFT JOIN e USING (model, concept)
ORDER BY s.model, s.concept;
