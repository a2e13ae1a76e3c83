-- The tokens each neuron of one model fires on most, over the stored top examples of every concept (special tokens and punctuation left out).
WITH tok AS (
    SELECT concept, layer, neuron, example_id,
           unnest(tokens) AS token, unnest(token_acts) AS act
    FROM top_examples
    WHERE model = $model
), clean AS (
    SELECT *,
           lower(regexp_replace(token, '^(Ġ|▁)', '')) AS word,
           max(act) OVER (PARTITION BY concept, layer, neuron, example_id) AS ex_max
    FROM tok
    WHERE NOT regexp_matches(token, '^(\[[A-Z]+\]|<[^>]*>)$')
), hits AS (
    -- the token(s) at an example's peak: the argmax, and anything within `near` of it
    SELECT layer, neuron, word,
           count(DISTINCT concept || ':' || example_id) AS n_examples, sum(act) AS total
    FROM clean
    -- a label names words: a peak on punctuation alone (',' '.' '!') says nothing
    WHERE ex_max > 0 AND act >= $near * ex_max AND regexp_matches(word, '[\pL\pN]')
    GROUP BY ALL
)
SELECT layer, neuron,
       list(word ORDER BY n_examples DESC, total DESC, word)[1:$n_tokens] AS top_tokens
FROM hits
GROUP BY layer, neuron
ORDER BY layer, neuron
