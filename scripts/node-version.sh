# Sourced by scripts/setup.sh: whether a Node version is older than the one Stowage needs. The
# floor is package.json's engines.node (>=22.19: the TypeScript type stripping and the APIs the
# code uses); setup.sh installs Node 24, the LTS the project targets, when it is.
STOWAGE_NODE_FLOOR_MAJOR=22
STOWAGE_NODE_FLOOR_MINOR=19

# node_too_old VERSION: true (0) when VERSION ("v22.18.0", "22.18.0" or empty) is below the floor.
node_too_old() {
  local version=${1#v} major minor rest
  [ -n "$version" ] || return 0
  major=${version%%.*}
  rest=${version#*.}
  minor=${rest%%.*}
  case "$major$minor" in *[!0-9]*) return 0 ;; esac
  [ "$major" -lt "$STOWAGE_NODE_FLOOR_MAJOR" ] && return 0
  [ "$major" -eq "$STOWAGE_NODE_FLOOR_MAJOR" ] && [ "$minor" -lt "$STOWAGE_NODE_FLOOR_MINOR" ] && return 0
  return 1
}
