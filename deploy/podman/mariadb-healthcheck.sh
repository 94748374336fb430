#!/bin/sh
# The stand-in for the official image's healthcheck.sh (its arguments are accepted and
# ignored): healthy once the server answers on its socket and the database exists.
exec mariadb --protocol=socket -e "USE \`${MARIADB_DATABASE}\`" > /dev/null
