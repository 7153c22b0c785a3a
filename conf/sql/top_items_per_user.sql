-- Top 5 items per user and domain for day {ds}, by score.
SELECT ds, domain, user_key, item_key, score, rank
FROM (
  SELECT ds, domain, user_key, item_key, score,
         ROW_NUMBER() OVER (PARTITION BY domain, user_key ORDER BY score DESC, item_key) AS rank
  FROM cdtm.scores
  WHERE ds = '{ds}'
) ranked
WHERE rank <= 5
ORDER BY domain, user_key, rank
