# Shared by the studies' collect.sh scripts (`source docs/records.sh` from the repository root).
copy_records() {   # RUNS D [GLOB]: log.csv, config.json, metrics.json of each finished run RUNS/GLOB (default *) into D/NAME/
  local r n
  for r in "$1"/${3:-*}/; do
    n=$(basename "$r"); [ -f "$r/metrics.json" ] || continue     # finished runs only
    mkdir -p "$2/$n"; cp "$r"/{log.csv,config.json,metrics.json} "$2/$n/"
  done
}
group() {          # D NAME TITLE: "TITLE=D/NAME-s0,D/NAME-s1,D/NAME-s2", the seeds 0-2 (or $SEEDS) that finished; nothing if none
  local out="" s
  for s in ${SEEDS:-0 1 2}; do [ -f "$1/$2-s$s/metrics.json" ] && out="$out,$1/$2-s$s"; done
  [ -n "$out" ] && echo "$3=${out#,}"; true
}
