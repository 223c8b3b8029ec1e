# The fuzz targets and what they link, shared by fuzz/CMakeLists.txt (libFuzzer builds,
# preset `fuzz`) and tests/CMakeLists.txt (their inputs replayed in the normal suite).
# moesim_fuzz_target(<name> <executable>) links <executable> against what fuzz/<name>.cpp needs.
set(MOESIM_FUZZ_TARGETS config sweep_grid csv)
set(MOESIM_FUZZ_DIR ${CMAKE_CURRENT_LIST_DIR})

# Each target links only the folders its parser lives in (and those below them).
set(MOESIM_FUZZ_LIBS_config moesim_cli)  # src/cli less main(), as the moesim executable links it
set(MOESIM_FUZZ_LIBS_sweep_grid moesim_sweep)
set(MOESIM_FUZZ_LIBS_csv moesim_data)

function(moesim_fuzz_target name exe)
  target_sources(${exe} PRIVATE ${MOESIM_FUZZ_DIR}/${name}.cpp)
  target_include_directories(${exe} PRIVATE ${PROJECT_SOURCE_DIR}/src)
  target_link_libraries(${exe} PRIVATE ${MOESIM_FUZZ_LIBS_${name}} moesim_warnings)
endfunction()
